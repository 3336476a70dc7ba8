"""The engine on N GPUs: rank 0 schedules, the other ranks follow.

Rank 0 runs the whole `LLMEngine` (scheduler, cache manager, sampler, tokenizer, snapshots) on its
shard of the model and of the cache. Every step it sends the step's plan (`StepPlan`: tokens,
lengths, slots, block tables) to the other ranks, which hold the other shards (attention heads,
Mamba channels and experts split as `model/tp_model.py` says) and a cache of the same blocks and
slots, and run the same forward; the collectives inside the layers pair up across ranks, and the
logits come out whole on every rank (the LM head is replicated), so only rank 0 samples. Snapshot
copies (`copy_slot`, `copy_block`) are sent the same way, in order with the steps. Decode steps
replay CUDA graphs on every rank (captured at the same step everywhere, the NCCL all-reduces
inside them); rank 0 then sends only the step's tokens, slots, lengths and block tables.

Messages go over pipes to the ranks `start_workers` spawned (tens of microseconds a message), or
over a gloo group on the CPU under a launcher such as `torchrun` (ranks on other hosts); neither
costs a GPU synchronisation. The tensors' collectives stay on NCCL.

`start_workers` spawns ranks 1..N-1 (one process each; gloo on CPU, NCCL with one GPU per rank)
and joins rank 0, the calling process, to their group; `LLM(..., tensor_parallel_size=N)` does it.
Under `torchrun` (the group exists already) rank 0's `LLM` attaches to it and spawns nothing, and
every other rank calls `run_follower`.
"""

from __future__ import annotations

import datetime
import os
import pickle
import tempfile
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from jamba_runtime.cache.paged import PagedHybridCache
from jamba_runtime.engine.graphs import DecodeGraphs
from jamba_runtime.engine.runner import ModelRunner, StepPlan, decode_inputs
from jamba_runtime.engine.scheduler import SchedulerOutput
from jamba_runtime.engine.sequence import Sequence
from jamba_runtime.errors import InvalidRequestError
from jamba_runtime.model.modeling import JambaForCausalLM
from jamba_runtime.model.tp_layers import TensorParallelGroup

# Ranks other than 0 wait for the next step as long as the server is idle: no collective timeout.
_NO_TIMEOUT = datetime.timedelta(days=3650)


class StepChannel:
    """Rank 0's messages to the other ranks, in order: pickled over `tp.pipes` when the ranks are
    this host's spawned processes (rank 0 holds one sending end per rank, the others their
    receiving end), else one `broadcast_object_list` each over the CPU group."""

    def __init__(self, tp: TensorParallelGroup) -> None:
        self.tp = tp

    def send(self, message: tuple[Any, ...]) -> None:
        if self.tp.pipes:
            data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
            for conn in self.tp.pipes:
                conn.send_bytes(data)
        else:
            dist.broadcast_object_list([message], src=0, group=self.tp.cpu_group)

    def receive(self) -> tuple[Any, ...]:
        if self.tp.pipes:
            return pickle.loads(self.tp.pipes[0].recv_bytes())
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=self.tp.cpu_group)
        return box[0]


def make_group(rank: int, world_size: int, pipes: list[Connection] | None = None) -> TensorParallelGroup:
    """This rank's `TensorParallelGroup` in the initialized default group; every rank calls it
    once, right after joining (it makes the CPU group for the step messages, a collective).
    `pipes`: rank 0's sending ends to its spawned ranks, or a spawned rank's receiving end."""
    cpu_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return TensorParallelGroup(rank, world_size, cpu_group=cpu_group, pipes=pipes or [])


class TensorParallelRunner(ModelRunner):
    """Rank 0's runner: sends each step's plan to the other ranks, then runs its own shard."""

    def __init__(
        self,
        model: JambaForCausalLM,
        cache: PagedHybridCache,
        channel: StepChannel,
        graphs: DecodeGraphs | None = None,
    ) -> None:
        super().__init__(model, cache, graphs=graphs)
        self.channel = channel

    def execute(self, step: SchedulerOutput) -> tuple[list[Sequence], torch.Tensor]:
        if self._graph_step(step):
            assert self.graphs is not None
            inputs = decode_inputs(step)
            # Message first: each rank's `run` costs ~1 ms of host time before its replay is
            # enqueued (measured on H100s), so the ranks prepare their replays in parallel.
            self.channel.send(("decode", *inputs))
            return [item.seq for item in step.scheduled], self.graphs.run(*inputs)
        plan = self.plan(step)
        self.channel.send(("step", plan))
        seqs = [item.seq for item in step.scheduled]
        return [seqs[i] for i in plan.sample_rows], self.run(plan)


def cache_spec(cache: PagedHybridCache, graphs: DecodeGraphs | None = None) -> dict[str, Any]:
    """What another rank needs to build a cache of the same blocks and slots, and the same decode
    graphs (their batch and length bounds; None without graphs)."""
    return {
        "num_blocks": cache.num_blocks,
        "block_size": cache.block_size,
        "num_slots": cache.num_slots,
        "kv_dtype": next(iter(cache.keys.values())).dtype if cache.keys else None,
        "ssm_dtype": next(iter(cache.ssm.values())).dtype if cache.ssm else torch.float32,
        "graphs": None if graphs is None else (graphs.max_batch, graphs.max_seq_len),
    }


def mirror_cache_copies(cache: PagedHybridCache, channel: StepChannel) -> None:
    """Make rank 0's snapshot copies (`copy_slot`, `copy_block`) happen on every rank."""
    copy_slot, copy_block = cache.copy_slot, cache.copy_block

    def mirrored_slot(src: int, dst: int) -> None:
        channel.send(("copy_slot", src, dst))
        copy_slot(src, dst)

    def mirrored_block(src: int, dst: int) -> None:
        channel.send(("copy_block", src, dst))
        copy_block(src, dst)

    cache.copy_slot = mirrored_slot  # type: ignore[method-assign]
    cache.copy_block = mirrored_block  # type: ignore[method-assign]


def follow(model: JambaForCausalLM, tp: TensorParallelGroup) -> int:
    """A rank other than 0: build the cache rank 0 describes, then run every step it sends until it
    says stop. Returns the number of steps run."""
    channel = StepChannel(tp)
    kind, spec = channel.receive()
    assert kind == "cache", f"expected the cache first, got {kind!r}"
    cache = PagedHybridCache(
        model.config, spec["num_blocks"], spec["block_size"], spec["num_slots"], model.dtype, model.device,
        spec["ssm_dtype"], spec["kv_dtype"], tp_size=tp.world_size,
    )  # fmt: skip
    runner = ModelRunner(model, cache)
    graphs = None if spec.get("graphs") is None else DecodeGraphs(model, cache, *spec["graphs"])
    steps = 0
    while True:
        message = channel.receive()
        if message[0] == "step":
            plan: StepPlan = message[1]
            runner.run(plan)
            steps += 1
        elif message[0] == "decode":
            assert graphs is not None, "rank 0 replays graphs that this rank did not set up"
            graphs.run(*message[1:])
            steps += 1
        elif message[0] == "copy_slot":
            cache.copy_slot(message[1], message[2])
        elif message[0] == "copy_block":
            cache.copy_block(message[1], message[2])
        elif message[0] == "stop":
            return steps
        else:  # pragma: no cover - rank 0 sends only the above
            raise RuntimeError(f"unknown message {message[0]!r} from rank 0")


@dataclass(frozen=True)
class WorkerArgs:
    """What a spawned rank needs to load its shard (everything picklable)."""

    model_dir: str
    device: str
    dtype: str
    quantization: str | None
    num_threads: int | None
    load_format: str = "auto"


def _worker_main(
    rank: int, world_size: int, init_method: str, backend: str, args: WorkerArgs, pipe: Connection
) -> None:
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    device = torch.device(args.device, rank) if args.device == "cuda" else torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world_size, timeout=_NO_TIMEOUT
    )
    try:
        _load_and_follow(args, device, pipe)
    finally:
        if backend == "gloo":  # NCCL's teardown can block (see `Workers.stop`); the exit frees it
            dist.destroy_process_group()


def _load_and_follow(args: WorkerArgs, device: torch.device, pipe: Connection | None = None) -> int:
    """This rank's part: load its shard, report the status to every rank, then follow rank 0's
    steps (when every rank loaded). Returns the steps run (0 when start-up failed somewhere)."""
    from jamba_runtime.model.loader import load_model

    rank, world_size = dist.get_rank(), dist.get_world_size()
    tp = make_group(rank, world_size, [pipe] if pipe is not None else None)
    model = None
    try:
        model = load_model(
            args.model_dir, device=device, dtype=args.dtype, quantization=args.quantization, tp=tp,
            load_format=args.load_format,
        )  # fmt: skip
        status = "ok"
    except Exception as e:  # noqa: BLE001 - reported to rank 0, which raises it
        status = f"rank {rank}: {type(e).__name__}: {e}"
    statuses: list[Any] = [None] * world_size
    dist.all_gather_object(statuses, status)  # rank 0's `Workers.confirm_loaded`
    if model is None or any(x != "ok" for x in statuses):
        return 0
    return follow(model, tp)


def run_follower(
    model_dir: str | Path,
    device: str = "cuda",
    dtype: str = "bfloat16",
    quantization: str | None = None,
    load_format: str = "auto",
) -> int:
    """Under `torchrun` (or any launcher that has already made the process group): what every
    rank other than 0 runs while rank 0 builds `LLM(..., tensor_parallel_size=world_size)`. Loads
    this rank's shard onto `cuda:LOCAL_RANK` (or the CPU) and follows rank 0's engine until it
    stops. Returns the steps run. The caller owns the process group."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        raise InvalidRequestError("run_follower runs on ranks other than 0 of an initialized process group")
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.get_rank())))
        torch.cuda.set_device(dev)
    args = WorkerArgs(str(model_dir), dev.type, dtype, quantization, None, load_format)
    steps = _load_and_follow(args, dev)
    # Meet rank 0's `Workers.stop` before the launcher ends the group: a rank leaving while another
    # is still inside a collective aborts the process (seen with gloo under load).
    dist.barrier()
    return steps


@dataclass
class Workers:
    """Ranks 1..N-1 running `follow` in their own processes, and rank 0's group."""

    tp: TensorParallelGroup
    processes: list[Any]
    device: torch.device
    owns_group: bool = True  # False under torchrun: the launcher made the group and ends it

    def confirm_loaded(self, status: str) -> None:
        """Rank 0's side of the start-up check: every rank reports whether its shard loaded
        ("ok" or the error). Raises `InvalidRequestError` naming the first rank that failed (the
        other ranks have then left their loop)."""
        statuses: list[Any] = [None] * self.tp.world_size
        dist.all_gather_object(statuses, status)
        failed = [x for x in statuses if x != "ok"]
        if failed:
            raise InvalidRequestError(f"tensor-parallel start-up failed: {failed[0]}")

    def stop(self, channel: StepChannel | None) -> None:
        """Tell the ranks to stop (when they follow steps), wait for them (10 s, then kill), and
        leave the group. A gloo group is destroyed; an NCCL one is left to the process's exit:
        its teardown can block once the peers are gone (seen on H100s with graphs captured), and
        a closed `LLM` must not hang its caller."""
        try:
            if channel is not None:
                channel.send(("stop",))
            if not self.owns_group:
                dist.barrier()  # `run_follower` meets it: every rank is out of its last collective
            for p in self.processes:
                p.join(timeout=10)
        finally:
            for p in self.processes:
                if p.is_alive():
                    p.kill()
                    p.join(timeout=5)
            if self.owns_group and dist.is_initialized():
                global _LEFT_OPEN
                if dist.get_backend() == "gloo":
                    dist.destroy_process_group()
                else:
                    _LEFT_OPEN = True


_LEFT_OPEN = False  # a closed NCCL tensor-parallel LLM left its group in this process


def start_workers(
    model_dir: str | Path,
    world_size: int,
    device: str | torch.device,
    dtype: str,
    quantization: str | None,
    num_threads: int | None = None,
    load_format: str = "auto",
) -> Workers:
    """Spawn ranks 1..world_size-1 (each loads its shard and waits for rank 0's cache and steps) and
    join this process to the group as rank 0. Returns the group and the processes; rank 0 then
    loads its own shard (`load_model(..., tp=workers.tp)`) and builds the engine with it.

    Under `torchrun` (the process group exists already) nothing is spawned: this process must be
    rank 0 of a group of `world_size`, whose other ranks run `run_follower`.

    Raises `InvalidRequestError` when an existing group does not fit (size, or this is not rank
    0), or CUDA has fewer than `world_size` GPUs."""
    dev = torch.device(device)
    if _LEFT_OPEN:
        raise InvalidRequestError(
            "this process already ran a tensor-parallel LLM on NCCL, whose group stays until the process "
            "exits: start the next tensor-parallel LLM in a new process"
        )
    if dist.is_initialized():
        return _attach(world_size, dev)
    if dev.type == "cuda" and torch.cuda.device_count() < world_size:
        raise InvalidRequestError(
            f"tensor_parallel_size={world_size} needs {world_size} GPUs; this machine has {torch.cuda.device_count()}"
        )
    backend = "nccl" if dev.type == "cuda" else "gloo"
    init_method = f"file://{Path(tempfile.mkdtemp(prefix='jamba-tp-')) / 'init'}"
    args = WorkerArgs(str(model_dir), dev.type, dtype, quantization, num_threads, load_format)
    ctx = mp.get_context("spawn")
    processes, senders = [], []
    for rank in range(1, world_size):
        receiver, sender = ctx.Pipe(duplex=False)
        p = ctx.Process(
            target=_worker_main, args=(rank, world_size, init_method, backend, args, receiver), daemon=True
        )
        p.start()
        processes.append(p)
        senders.append(sender)
    rank0 = torch.device("cuda", 0) if dev.type == "cuda" else dev
    if rank0.type == "cuda":
        torch.cuda.set_device(rank0)
    dist.init_process_group(
        backend, init_method=init_method, rank=0, world_size=world_size, timeout=_NO_TIMEOUT
    )
    return Workers(make_group(0, world_size, senders), processes, rank0)


def _attach(world_size: int, device: torch.device) -> Workers:
    """Rank 0 of a group a launcher (torchrun) made: the other ranks run `run_follower`."""
    if dist.get_world_size() != world_size or dist.get_rank() != 0:
        raise InvalidRequestError(
            f"this process is rank {dist.get_rank()} of a torch.distributed group of {dist.get_world_size()}: "
            f"tensor_parallel_size={world_size} needs rank 0 of a group of that size (the other ranks run "
            "jamba_runtime.engine.tensor_parallel.run_follower); one tensor-parallel LLM per process"
        )
    rank0 = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if device.type == "cuda" else device
    if rank0.type == "cuda":
        torch.cuda.set_device(rank0)
    return Workers(make_group(0, world_size), [], rank0, owns_group=False)
