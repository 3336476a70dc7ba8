"""One op a file: the float32 PyTorch reference (`<op>_ref`) beside Triton kernels and their
wrappers; `backend.py` picks between them (Triton on CUDA, the reference elsewhere). See
docs/kernels.md."""
