"""Hub: staging and pushing model folders and Spaces, official-checkpoint conversion."""
