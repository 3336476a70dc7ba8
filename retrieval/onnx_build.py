"""Building the ONNX files `OnnxEmbedder` runs, and `ParallelSession`, how it runs them: export a Hugging Face encoder, fuse it with
onnxruntime's transformer optimizer, quantize it to int8. Each step reads one file and writes
another atomically (a temp file beside the target, then a rename), so a crash leaves either the
old state or the finished file, never half of one.

Why these steps (measured on a 2-core AVX2 CPU, all-MiniLM-L6-v2, SciFact abstracts at 256
tokens; `bench/retrieval/embedder_speed.py`): the fusion replaces each layer's ~40 small nodes by
`Attention`, `SkipLayerNormalization` and `BiasGelu` kernels, and dynamic int8 quantization of
the fused graph (`QAttention` + `MatMulInteger`) is what makes int8 clearly faster than float32
PyTorch; quantizing the unfused graph gains little because the attention softmax, layer norms and
GELU stay float32 and unfused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np

from jamba_stack.retrieval.errors import EmbedderUnavailableError

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_T = TypeVar("_T")
_R = TypeVar("_R")
BUILD_VERSION = "fused-v2"
"""Part of the cache key: files built by an older recipe (unfused, SDPA export) are not reused."""


class FusionError(EmbedderUnavailableError):
    """The BERT fusion did not apply (unknown architecture) or changed the outputs; the caller
    runs the plain export instead."""


@dataclass(frozen=True)
class Int8Recipe:
    """How `quantize_int8` quantizes: weights per output channel or per tensor, 7-bit weight range
    (`reduce_range`: avoids the 16-bit saturation of AVX2's u8 x s8 multiply-add, which has no
    VNNI), signed or unsigned weights, and which op types (`Attention` becomes `QAttention`)."""

    per_channel: bool = False
    reduce_range: bool = True
    weight_type: Literal["s8", "u8"] = "s8"
    op_types: tuple[str, ...] = ("MatMul", "Attention")

    @property
    def tag(self) -> str:
        """A short name for file names: every field that changes the weights is in it."""
        ops = "".join(o[0].lower() for o in self.op_types)
        return (
            f"{self.weight_type}{'-pc' if self.per_channel else ''}{'-rr' if self.reduce_range else ''}-{ops}"
        )


FUSED_INT8 = Int8Recipe(
    per_channel=True, reduce_range=True, weight_type="s8", op_types=("MatMul", "Attention")
)
"""What `OnnxEmbedder(quantize="int8")` builds from a fused graph. Per-tensor weight scales lose
too much on MiniLM (cosine to float32 ~0.76); per channel keeps it at ~0.994."""
PLAIN_INT8 = Int8Recipe(per_channel=True, reduce_range=False, weight_type="s8", op_types=("MatMul",))
"""The recipe for a graph the fusion does not recognize (the pre-fusion default, unchanged)."""


@contextlib.contextmanager
def _atomic(out: Path) -> Iterator[Path]:
    """A temp path beside `out`, renamed onto it when the block succeeds, removed when it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}.onnx")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and quantizer's advice (tracer warnings, "consider pre-processing")."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def export_encoder(model_dir: Path, out: Path) -> None:
    """Export the encoder in `model_dir` (Hugging Face `AutoModel`, local files only) to `out`:
    inputs `input_ids`, `attention_mask`, `token_type_ids` (int64, batch x seq, both dynamic),
    output `last_hidden_state`. Attention is traced in its eager form (matmul, mask add, softmax)
    because that is the pattern onnxruntime's fusion recognizes; the SDPA form exports as a
    graph it cannot fuse. Raises EmbedderUnavailableError when torch, transformers or onnx is
    missing."""
    try:
        import onnx  # noqa: F401 - torch.onnx.export needs it
        import torch
        from transformers import AutoModel
    except ImportError as e:
        raise EmbedderUnavailableError(
            f"exporting to ONNX needs torch, transformers and onnx: pip install onnx ({e})"
        ) from e

    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager")
    model.eval()

    class _Hidden(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            return self.m(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    ids = torch.ones(2, 16, dtype=torch.long)
    dyn = {0: "batch", 1: "seq"}
    with _atomic(out) as tmp, _quiet(), torch.no_grad():
        # The TorchScript exporter: the dynamo one needs onnxscript and gains nothing for BERT.
        torch.onnx.export(
            _Hidden(model),
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(tmp),
            input_names=list(INPUT_NAMES),
            output_names=["last_hidden_state"],
            dynamic_axes={name: dyn for name in (*INPUT_NAMES, "last_hidden_state")},
            opset_version=17,
            dynamo=False,
        )


def fuse_bert(src: Path, out: Path, *, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Fuse a BERT-like export with `onnxruntime.transformers.optimizer` (model_type "bert",
    ONNX-level only: the result runs on any onnxruntime build) and write it to `out`.
    Returns the fused operator counts. Raises FusionError when no attention layer was fused or
    the optimizer fails (an architecture it does not know): the caller keeps the unfused graph.

    Fused `Attention` masks by sequence length (the mask's row sums), which is right for the
    right-padded batches `OnnxEmbedder` feeds."""
    from onnxruntime.transformers.optimizer import optimize_model

    if num_heads <= 0 or hidden_size <= 0:
        raise FusionError(f"num_heads={num_heads}, hidden_size={hidden_size}: the config lacks them")
    try:
        with _quiet():
            opt = optimize_model(
                str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0
            )
    except Exception as e:  # the optimizer raises assorted errors on graphs it does not know
        raise FusionError(f"onnxruntime's BERT fusion failed on {src}: {e}") from e
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    if not stats.get("Attention"):
        raise FusionError(f"onnxruntime's BERT fusion found no attention layer in {src}: {stats}")
    with _atomic(out) as tmp:
        opt.save_model_to_file(str(tmp))
    return stats


def check_same_outputs(plain: Path, fused: Path, tokenizer: object, *, atol: float = 1e-3) -> None:
    """Run both graphs on a right-padded probe batch (texts of different lengths) and compare the
    hidden states of the real tokens. Raises FusionError when they differ by more than `atol`:
    the fused attention reads the mask as per-row lengths, which must agree with the export."""
    import onnxruntime as ort

    probe = ["A short probe.", "A longer probe sentence, so that the first row of the batch is padded."]
    enc = tokenizer.encode_batch(probe)  # type: ignore[attr-defined]
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    outs = []
    for path in (plain, fused):
        try:
            s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            names = {i.name for i in s.get_inputs()}
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            outs.append(s.run(None, {k: v for k, v in feeds.items() if k in names})[0])
        except Exception as e:  # onnxruntime's errors have no common base class
            raise FusionError(f"cannot run {path} on a probe batch: {e}") from e
    keep = mask.astype(bool)
    diff = float(np.abs(outs[0][keep] - outs[1][keep]).max())
    if not diff <= atol:
        raise FusionError(f"the fused graph {fused} differs from the export by {diff:.2e} (> {atol})")


def quantize_int8(src: Path, out: Path, recipe: Int8Recipe = Int8Recipe()) -> None:
    """Dynamic int8 quantization of `src` into `out`: weights int8 offline, activations
    quantized per batch at run time. The embedding tables stay float32 (quantizing them costs
    quality and no time). Raises EmbedderUnavailableError when onnx is missing."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise EmbedderUnavailableError(f"int8 export needs onnx: pip install onnx ({e})") from e
    with _atomic(out) as tmp, _quiet():
        quantize_dynamic(
            str(src),
            str(tmp),
            op_types_to_quantize=list(recipe.op_types),
            weight_type=QuantType.QInt8 if recipe.weight_type == "s8" else QuantType.QUInt8,
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            # Shape inference stops at the fused contrib ops; their outputs are float32.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


# ---------------------------------------------------------------- running


def cpu_count() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ParallelSession:
    """One onnxruntime session (one intra-op thread per call) driven from `threads` Python
    threads at once (onnxruntime releases the GIL and allows concurrent `run`s). `run(None,
    feeds)` is onnxruntime's call, its rows split into calls of `rows` and run in parallel."""

    def __init__(self, path: Path, threads: int, rows: int) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self._session.get_inputs()}
        self.threads = threads
        self.rows = rows
        # Its threads start on first use; made here so concurrent callers share one pool.
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="onnx-embed") if threads > 1 else None

    def run_one(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """last_hidden_state of one right-padded batch, on the calling thread."""
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return self._session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})[0]

    def map(self, fn: Callable[[_T], _R], items: list[_T]) -> list[_R]:
        """`fn` over `items`, `threads` at a time, results in order."""
        if self._pool is None or len(items) == 1:
            return [fn(x) for x in items]
        return list(self._pool.map(fn, items))

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """onnxruntime's `InferenceSession.run` for the first output (last_hidden_state)."""
        n = len(feeds["input_ids"])
        parts = self.map(
            lambda i: self.run_one(
                feeds["input_ids"][i : i + self.rows], feeds["attention_mask"][i : i + self.rows]
            ),
            list(range(0, n, self.rows)),
        )
        return [np.concatenate(parts)]

    def get_inputs(self) -> list[object]:
        return self._session.get_inputs()
