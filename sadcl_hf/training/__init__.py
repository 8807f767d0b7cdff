"""Training: the Trainer, its arguments and callbacks, prototypes, the two-stage recipe."""
