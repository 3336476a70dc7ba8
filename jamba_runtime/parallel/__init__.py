"""Tensor and expert parallel Jamba over `torch.distributed` (see `docs/scaling.md`)."""
