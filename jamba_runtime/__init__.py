"""jamba_runtime: a Jamba inference runtime (reference PyTorch path first)."""
