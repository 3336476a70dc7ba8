"""Which implementation the kernels' public functions run.

`auto` (the default): Triton on CUDA tensors when `triton` imports, the float32 PyTorch reference
(`<op>_ref`) otherwise, so CPU runs and CI never need Triton. `reference` forces the reference
everywhere (to rule a kernel out when chasing a numerical difference); `triton` forces Triton even
for CPU tensors, which only works under Triton's interpreter (`TRITON_INTERPRET=1`, set before
the kernel modules are imported) and is how the kernels are tested without a GPU.

The runtime reads no environment variables here (settings live in `jamba_stack.app.settings`); a caller
switches with `set_kernel_backend` or the `kernel_backend` context manager.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, get_args

import torch

from jamba_runtime.errors import JambaStackError

try:
    import triton  # noqa: F401 - only whether it imports matters here

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the install
    HAS_TRITON = False

Backend = Literal["auto", "reference", "triton"]
_backend: Backend = "auto"


class KernelBackendError(JambaStackError):
    """An unknown kernel backend was asked for, or Triton was forced where it cannot run."""

    http_status = 500
    code = "kernel_backend"


def set_kernel_backend(name: str) -> None:
    """Select the backend for every kernel call from now on.

    Raises:
        KernelBackendError: `name` is not one of auto/reference/triton, or it is `triton` and the
            `triton` package does not import.
    """
    global _backend
    if name not in get_args(Backend):
        raise KernelBackendError(
            f"unknown kernel backend {name!r}: use one of {', '.join(get_args(Backend))}"
        )
    if name == "triton" and not HAS_TRITON:
        raise KernelBackendError(
            "kernel backend 'triton' needs the triton package: pip install 'jamba-stack[gpu]' "
            "or use 'auto' / 'reference'"
        )
    _backend = name  # type: ignore[assignment]


def get_kernel_backend() -> Backend:
    """The backend selected now."""
    return _backend


@contextmanager
def kernel_backend(name: str) -> Iterator[None]:
    """Run a block with another backend, restoring the previous one after it (even on error)."""
    previous = _backend
    set_kernel_backend(name)
    try:
        yield
    finally:
        set_kernel_backend(previous)


def use_triton(x: torch.Tensor) -> bool:
    """True when a call on `x` should run the Triton kernel under the selected backend."""
    if _backend == "reference" or not HAS_TRITON:
        return False
    return _backend == "triton" or x.is_cuda


_interpreter_patched = False


def patch_triton_interpreter() -> None:
    """Work around two defects of Triton 3.6's CPU interpreter, for tests and `--smoke` runs only
    (the compiled path has neither; call it once when `TRITON_INTERPRET=1`, before any launch):

    - a scalar loaded from memory is a 1-element array, which numpy >= 2.4 refuses to turn into an
      index, so `range(0, n)` over a loaded `n` fails;
    - `tl.dot` on bfloat16 multiplies the raw 16-bit patterns as integers.

    Idempotent; raises `KernelBackendError` when triton is missing.
    """
    global _interpreter_patched
    if not HAS_TRITON:
        raise KernelBackendError("patching Triton's interpreter needs the triton package")
    if _interpreter_patched:
        return
    import numpy as np
    import triton.language as tl
    import triton.runtime.interpreter as ti

    patch_tensor = ti._patch_lang_tensor

    def patched(tensor, scope) -> None:  # noqa: ANN001 - interpreter internals
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    create_dot = ti.InterpreterBuilder.create_dot

    def as_f32(h):  # noqa: ANN001, ANN202
        if h.dtype == tl.bfloat16:
            return ti.TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
        return h

    def dot(self, a, b, d, input_precision, max_num_imprecise_acc):  # noqa: ANN001, ANN202
        return create_dot(self, as_f32(a), as_f32(b), d, input_precision, max_num_imprecise_acc)

    ti._patch_lang_tensor = patched
    ti.InterpreterBuilder.create_dot = dot
    _interpreter_patched = True
