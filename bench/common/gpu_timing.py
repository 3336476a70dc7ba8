"""Timing and environment helpers for the GPU benches: a device clock (CUDA events or
`perf_counter`), the hardware probe (bf16 matmul rate, copy bandwidth), generation timed by
LM-head hooks, and device / software descriptions for the JSON."""

from __future__ import annotations

import gc
import math
import platform
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import transformers

START = time.perf_counter()  # the bench's start: `log` stamps every line with the seconds since


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {msg}", flush=True)


def elapsed() -> float:
    return time.perf_counter() - START


# ---- timing ---------------------------------------------------------------------------------------
class Clock:
    """Marks on the device's timeline: CUDA events (recorded on the current stream), or
    `perf_counter` on CPU. `seconds(a, b)` waits for `b` before reading."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def seconds(self, a: Any, b: Any) -> float:
        if self.cuda:
            b.synchronize()
            return a.elapsed_time(b) / 1e3
        return b - a

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any]) -> float:
        a = self.mark()
        fn()
        b = self.mark()
        return self.seconds(a, b)


def _matmul_seconds(clock: Clock, n: int, device: torch.device, dtype: torch.dtype, reps: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    return statistics.median(clock.time(lambda: torch.matmul(a, b)) for _ in range(reps))


def _copy_seconds(clock: Clock, nbytes: int, device: torch.device, reps: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    return statistics.median(clock.time(lambda: dst.copy_(src)) for _ in range(reps))


def measure_hardware(device: torch.device, dtype: torch.dtype, quick: bool) -> dict[str, Any]:
    """Matmul rate in `dtype` (n x n x n) and copy bandwidth (bytes read + written per second)."""
    clock = Clock(device)
    cuda = device.type == "cuda"
    n = 8192 if cuda else 512
    reps = 10 if cuda else 3
    t_mm = _matmul_seconds(clock, n, device, dtype, reps)
    nbytes = (1 << 30 if quick else 2 << 30) if cuda else 64 << 20
    t_cp = _copy_seconds(clock, nbytes, device, reps)
    free_memory()
    return {
        "matmul_flops": 2 * n**3 / t_mm,
        "matmul_n": n,
        "matmul_dtype": str(dtype).removeprefix("torch."),
        "copy_bandwidth_bytes_s": 2 * nbytes / t_cp,
        "copy_bytes": nbytes,
    }


def watch_runner(runner: Any, on_logits: Callable[[torch.Tensor], None]) -> Callable[[], None]:
    """Call `on_logits(logits)` after each step our engine's `ModelRunner` runs and return the
    undo: its `execute` and `execute_fed` wrapped (a decode step replayed from a CUDA graph calls
    no module's forward, and one launched ahead of reading the last step's tokens runs through
    `execute_fed`)."""
    execute, execute_fed = runner.execute, runner.execute_fed

    def marked(step: Any) -> Any:
        seqs, logits = execute(step)
        on_logits(logits)
        return seqs, logits

    def marked_fed(step: Any, tokens: torch.Tensor) -> torch.Tensor:
        logits = execute_fed(step, tokens)
        on_logits(logits)
        return logits

    runner.execute, runner.execute_fed = marked, marked_fed

    def undo() -> None:
        del runner.execute, runner.execute_fed

    return undo


def _mark_steps(source: Any, on_step: Callable[[int], None]) -> Callable[[], None]:
    """Call `on_step(logits rows)` after each step of `source` and return the undo. `source` is an
    LM head (`nn.Module`: a forward hook; every step of a plain loop ends in one call) or our
    engine's `ModelRunner` (`watch_runner`)."""
    if isinstance(source, torch.nn.Module):
        handle = source.register_forward_hook(lambda _m, _i, out: on_step(math.prod(out.shape[:-1])))
        return handle.remove
    return watch_runner(source, lambda logits: on_step(logits.shape[0]))


def timed_generate(
    clock: Clock,
    lm_head: Any,
    gen: Callable[[torch.Tensor, int], list[list[int]]],
    ids: torch.Tensor,
    n: int,
) -> dict[str, Any]:
    """Run `gen(ids, n)` marking each step (`_mark_steps`: `lm_head` is an LM head module or our
    engine's runner; a prefill chunk that completes no prompt gives a step with 0 rows).

    Returns total_s (submit -> last call), first_token_s (submit -> the call N from the end: the
    last sequence's first token), decode_s (that call -> the last), window_tokens (logits rows in
    the decode window: tokens sampled there), calls, and tokens. Raises RuntimeError when fewer
    than N calls happened or a sequence got other than N tokens."""
    marks: list[tuple[Any, int]] = []

    undo = _mark_steps(lm_head, lambda rows: marks.append((clock.mark(), rows)))
    try:
        t0 = clock.mark()
        tokens = gen(ids, n)
    finally:
        undo()
    clock.sync()
    if len(marks) < n or any(len(t) != n for t in tokens):
        raise RuntimeError(
            f"{len(marks)} LM-head calls and lengths {sorted({len(t) for t in tokens})} for n={n}"
        )
    first, last = marks[-n][0], marks[-1][0]
    return {
        "total_s": clock.seconds(t0, last),
        "first_token_s": clock.seconds(t0, first),
        "decode_s": clock.seconds(first, last),
        "window_tokens": sum(rows for _, rows in marks[len(marks) - n + 1 :]),
        "calls": len(marks),
        "tokens": tokens,
    }


def short_error(e: BaseException) -> str:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return f"{type(e).__name__}: {e}"[:600] + " | " + "".join(tb[-3:])[-900:]


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def device_info(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {
            "name": props.name,
            "memory_gib": props.total_memory / 2**30,
            "capability": f"{props.major}.{props.minor}",
        }
    return {"name": platform.processor() or "cpu", "threads": torch.get_num_threads()}


def software_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
    }
    for mod in ("triton", "mamba_ssm", "causal_conv1d"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent or broken: say so
            info[mod] = None
    try:
        from jamba_runtime.kernels.backend import get_kernel_backend

        info["kernel_backend"] = get_kernel_backend()
    except Exception:  # noqa: BLE001
        info["kernel_backend"] = None
    return info
