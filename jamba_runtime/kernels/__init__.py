"""One op a file: the float32 PyTorch reference (`<op>_ref`) now; Triton kernels land beside them."""
