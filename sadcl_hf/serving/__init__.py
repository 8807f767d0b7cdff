"""Serving: pipelines, batch tagging, ONNX export and runtime, the web tagger, attention maps."""
