"""The full Jamba-1.5-Mini shape on one and several GPUs, cache dtypes, tensor-parallel profiles."""
