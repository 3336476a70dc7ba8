"""Kernel names of a torch.profiler table grouped into families (scan, conv, attention, MoE, norm,
GEMM, copies), so that a step's GPU time reads as where it goes."""

from __future__ import annotations

# First match wins: "moe" before "gemm" puts the grouped MoE GEMMs in the MoE family.
FAMILIES = (
    ("scan", ("scan", "selective", "_update_kernel", "_chunk")),
    ("conv", ("conv",)),
    ("attention", ("flash", "decode_kernel", "combine", "attention")),
    ("moe", ("grouped", "moe", "sort", "index_add", "scatter", "gather", "cumsum")),
    ("norm", ("rms", "norm")),
    ("gemm", ("gemm", "sm90", "cutlass", "nvjet", "cublas", "matmul")),
    ("copy/elementwise", ("copy", "elementwise", "vectorized", "fill", "cat", "index")),
)


def family(name: str) -> str:
    """The family of a kernel name, or "other"."""
    low = name.lower()
    for fam, keys in FAMILIES:
        if any(k in low for k in keys):
            return fam
    return "other"
