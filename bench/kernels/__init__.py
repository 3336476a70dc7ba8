"""Each Triton kernel against its PyTorch reference, and tile sweeps of the prefill and int8 MoE kernels."""
