"""Model preparation: the embedded default model, checkpoint conversion and checks."""
