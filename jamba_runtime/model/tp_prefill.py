"""Start N processes, one per rank, and run a tensor-parallel prefill in them.

`spawn_prefill` is what the test and a single-host run use: it spawns `world_size` processes
(gloo on CPU, NCCL with one GPU per rank), each reads its shard of the checkpoint and runs the
same prompts; rank 0's logits come back. Under `torchrun` (several hosts) the same
`prefill_worker` body runs with the rank and world size from the environment (`docs/scaling.md`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from jamba_runtime.errors import InvalidRequestError
from jamba_runtime.model.loader import load_model
from jamba_runtime.model.tp_layers import TensorParallelGroup
from jamba_runtime.model.tp_model import prefill


@dataclass(frozen=True)
class PrefillResult:
    """Rank 0's view of a tensor-parallel prefill."""

    logits: list[torch.Tensor]  # one (len(prompt), vocab) float tensor per prompt, on CPU
    num_all_reduces: int  # collectives one forward issued on rank 0
    shard_parameter_bytes: int  # bytes of rank 0's parameters after sharding


def prefill_worker(
    rank: int,
    world_size: int,
    init_method: str,
    backend: str,
    model_dir: str,
    dtype: str,
    quantizations: list[str | None],
    prompts: list[list[int]],
    out_path: str,
    num_threads: int | None,
) -> None:
    """One rank: join the group; per quantization load, shard, prefill; rank 0 writes the
    `PrefillResult`s to `out_path`."""
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
    try:
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        results = []
        for quantization in quantizations:
            tp = TensorParallelGroup(rank, world_size)
            # Each rank reads only its shard: a model too big for one GPU never lands whole on one.
            model = load_model(model_dir, device=device, dtype=dtype, quantization=quantization, tp=tp)
            nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
            logits = prefill(model, prompts)
            results.append(PrefillResult([x.float().cpu() for x in logits], tp.num_all_reduces, nbytes))
        if rank == 0:
            torch.save([r.__dict__ for r in results], out_path)
    finally:
        dist.destroy_process_group()


def spawn_prefill(
    model_dir: str | Path,
    prompts: list[list[int]],
    world_size: int = 2,
    backend: str = "gloo",
    dtype: str = "float32",
    quantizations: tuple[str | None, ...] = (None,),
    num_threads: int | None = None,
) -> list[PrefillResult]:
    """Run `prefill` over `world_size` spawned processes and return rank 0's results, one per
    entry of `quantizations` (each a fresh load in the same process group, which saves the
    start-up of the processes).

    Raises `InvalidRequestError` for an unknown backend or more NCCL ranks than GPUs; an error in
    any rank is raised here (`torch.multiprocessing.ProcessRaisedException`)."""
    if backend not in ("gloo", "nccl"):
        raise InvalidRequestError(f"backend {backend!r} is not supported: use 'gloo' (CPU) or 'nccl' (GPUs)")
    if backend == "nccl" and world_size > torch.cuda.device_count():
        raise InvalidRequestError(
            f"tensor parallel over {world_size} GPUs asked for, {torch.cuda.device_count()} visible: "
            "lower tensor_parallel_size"
        )
    with tempfile.TemporaryDirectory() as tmp:
        init_method = (Path(tmp) / "rendezvous").as_uri()  # a file store: no port to pick
        out_path = str(Path(tmp) / "rank0.pt")
        args = (
            world_size,
            init_method,
            backend,
            str(model_dir),
            dtype,
            list(quantizations),
            prompts,
            out_path,
        )
        mp.spawn(prefill_worker, args=(*args, num_threads), nprocs=world_size, join=True)
        return [PrefillResult(**r) for r in torch.load(out_path)]
