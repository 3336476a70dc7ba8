"""`jamba-stack serve` under load on one GPU, beside the same engine driven in-process.

    python -m bench.serve.gpu                      # GPU: Mini shape cut to 8 layers, bf16, ~4 min
    python -m bench.serve.gpu --device cpu --quick # the tiny model on CPU: the logic check (a test runs it)

The server runs as a user starts it (`python -m jamba_stack.app.cli serve`, a subprocess on a
free loopback port, `--load-format dummy`: random weights from config.json), with a tokenizer of
the model's vocab size (Mini: the structured benches' 65,536-token BPE, so every id decodes to
real text; the tiny model: its own). A load generator in this process drives it through the
async `openai` client (streaming `/v1/completions`, `ignore_eos`, greedy unless `--temperature`)
in a closed loop at each
concurrency level: `concurrency` requests in flight, each finished one replaced by the next,
`--requests-per-slot` x concurrency requests a level (at least `--min-requests`). Two workloads:
`fixed` (random text prompts of `--prompt-len` tokens, `--new-tokens` new) and `mixed` (prompt
lengths log-uniform in [`--mix-min`, `--mix-max`]). Then the server is stopped and the same
engine settings are loaded in-process (`AsyncLLM`, same load format, warmed up as `serve` warms
up: `LLMEngine.warm_up`) and driven by the same
load generator without HTTP: the offline figures. What the server adds (tokenizing,
detokenizing, JSON, SSE, the event loop) is the difference.

Per level: requests/s, output tokens/s, TTFT p50/p99, time per output token (TPOT) p50/p99,
inter-token latency (ITL) p99, errors (a failed request, or one that made fewer than
`--new-tokens` tokens); and where the mean TTFT went, from the server's `/metrics` (the engine's
`metrics()` offline) read before and after the level: preparation (the server's checks and
tokenizing, until the engine has the request), the engine's queue time (to the request's first
step), its prefill time (to its first token), and the rest (the way back to the client). GPU memory in use (nvidia-smi, the whole device) after warm-up, after
each level and after the load; kernels Triton compiled during each level (its on-disk cache,
shared by both sides: the HTTP side runs first and pays the first compiles). JSON to `$OUT/serve_gpu.json` (else bench/results/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.common.paths import out_dir
from bench.common.tables import markdown_table
from bench.serve.loadgen import Sender, closed_loop, level_stats
from bench.serve.server import Server, http_sender
from bench.serve.ttft import Parts, engine_parts, server_parts, split_table, ttft_split


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.serve.gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (tiny model: a logic check)")
    ap.add_argument("--quick", action="store_true", help="fewer levels and requests")
    ap.add_argument("--layers", type=int, default=8, help="layers of the Mini shape kept (GPU)")
    ap.add_argument("--levels", help="comma-separated concurrency levels (1,8,32,64,128)")
    ap.add_argument("--workloads", default="fixed,mixed", help="fixed, mixed or both")
    ap.add_argument("--prompt-len", type=int, help="prompt tokens of the fixed workload (1024)")
    ap.add_argument("--new-tokens", type=int, help="new tokens per request (128)")
    ap.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling temperature of every request (0: greedy; the API's default is 1)",
    )
    ap.add_argument("--mix-min", type=int, help="shortest prompt of the mixed workload (256)")
    ap.add_argument("--mix-max", type=int, help="longest prompt of the mixed workload (8192)")
    ap.add_argument("--requests-per-slot", type=int, default=2, help="requests per level / concurrency (2)")
    ap.add_argument("--min-requests", type=int, help="fewest requests a level (8)")
    ap.add_argument(
        "--offline",
        default="all",
        help="levels the in-process engine runs: all, none, or workload:level,... (e.g. fixed:1,fixed:64)",
    )
    ap.add_argument("--cache-memory-gb", type=float, help="the engine's KV + state memory (GPU: 8)")
    ap.add_argument("--startup-timeout", type=float, default=600.0, help="seconds for the server to come up")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="JSON path (default $OUT/serve_gpu.json, else bench/results/)")
    args = ap.parse_args(argv)
    cpu = args.device == "cpu"
    defaults: dict[str, Any] = (
        dict(levels="1,4", prompt_len=64, new_tokens=8, mix_min=16, mix_max=128, min_requests=4, cache_memory_gb=0.5)
        if cpu
        else dict(
            levels="1,8,32,64,128", prompt_len=1024, new_tokens=128, mix_min=256, mix_max=8192, min_requests=8,
            cache_memory_gb=8.0,
        )
    )  # fmt: skip
    if args.quick and not cpu:
        defaults.update(levels="1,8,64", min_requests=4)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.levels = [int(x) for x in str(args.levels).split(",") if x.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not args.levels or min(args.levels) < 1 or any(w not in ("fixed", "mixed") for w in args.workloads):
        ap.error("--levels must be positive integers; --workloads fixed and/or mixed")
    if args.new_tokens < 2 or args.mix_min < 1 or args.mix_max < args.mix_min:
        ap.error("--new-tokens >= 2 (TPOT needs two tokens) and 1 <= --mix-min <= --mix-max")
    return args


# ---- the model directory and prompts ----------------------------------------------------------------
def model_dir(args: argparse.Namespace, directory: Path) -> Path:
    """config.json of the shape and a tokenizer of its vocab size: what `--load-format dummy` reads."""
    directory.mkdir(parents=True, exist_ok=True)
    from jamba_runtime.config import JambaConfig
    from jamba_runtime.tiny import TINY_CONFIG
    from jamba_runtime.tokenizer.tiny import tiny_model_token_ids, write_tiny_tokenizer

    if args.device == "cpu":
        raw = {**TINY_CONFIG, **tiny_model_token_ids()}
    else:
        from bench.common.gpu_models import MINI_CONFIG, cut_config

        raw = cut_config(MINI_CONFIG, args.layers)
    JambaConfig.from_dict(raw, source="bench config").save(directory)
    if raw["vocab_size"] == 65536:
        from bench.structured.bpe65k import bpe65k_tokenizer_json

        write_tiny_tokenizer(directory)  # tokenizer_config.json, special tokens (ids 0..19 in both)
        (directory / "tokenizer.json").write_text(bpe65k_tokenizer_json(), encoding="utf-8")
    else:
        write_tiny_tokenizer(directory, vocab_size=raw["vocab_size"])
    return directory


def make_prompts(tokenizer_dir: Path, lengths: list[int], seed: int) -> tuple[list[str], list[int]]:
    """Random text of about each length in tokens (random non-special ids decoded, re-encoded and
    cut to the length); (texts, their token counts)."""
    from jamba_runtime import Tokenizer

    tok = Tokenizer.from_dir(tokenizer_dir)
    vocab = tok.vocab_size
    rng = random.Random(seed)
    texts, counts = [], []
    for n in lengths:
        ids = [rng.randrange(20, vocab) for _ in range(n)]
        ids = tok.encode(tok.decode(ids), add_special_tokens=False)[:n]
        text = tok.decode(ids)
        texts.append(text)
        counts.append(len(tok.encode(text, add_special_tokens=False)))
    return texts, counts


def workload_lengths(args: argparse.Namespace, workload: str, count: int, seed: int) -> list[int]:
    if workload == "fixed":
        return [args.prompt_len] * count
    rng = random.Random(seed)
    lo, hi = math.log(args.mix_min), math.log(args.mix_max)
    return [int(math.exp(rng.uniform(lo, hi))) for _ in range(count)]


def engine_sender(llm: Any, temperature: float) -> Sender:
    """A sender over an in-process `AsyncLLM`: the same requests without HTTP."""
    from jamba_runtime import SamplingParams

    async def send(prompt: str, max_tokens: int) -> AsyncIterator[int | None]:
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, ignore_eos=True)
        count = 0
        async for delta in llm.add_request(prompt, params):
            if delta.token_ids:
                count += len(delta.token_ids)
                yield None
        yield count

    return send


def gpu_memory_used_mib() -> float | None:
    """Memory in use on GPU 0 (all processes), MiB, from nvidia-smi; None where there is none."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return float(out.stdout.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def triton_cache_entries() -> int:
    """Kernels in Triton's on-disk cache (one folder each), which the server subprocess and this
    process share: a level that adds some compiled kernels during its run (a first-seen
    specialization costs 0.1-1 s of the step it lands in), and a later side then loads them."""
    root = Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")
    try:
        return sum(1 for p in root.iterdir() if p.is_dir())
    except OSError:
        return 0


# ---- the runs ---------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.model = model_dir(args, workdir / "model")
        self.rows: list[dict[str, Any]] = []
        self.memory: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}
        self.prompts: dict[tuple[str, int], tuple[list[str], list[int]]] = {}

    def level_prompts(self, workload: str, level: int) -> tuple[list[str], list[int]]:
        key = (workload, level)
        if key not in self.prompts:
            a = self.args
            count = max(a.min_requests, a.requests_per_slot * level)
            seed = a.seed + 1000 * level + (0 if workload == "fixed" else 7)
            self.prompts[key] = make_prompts(self.model, workload_lengths(a, workload, count, seed), seed)
        return self.prompts[key]

    def offline_levels(self) -> set[tuple[str, int]]:
        spec = self.args.offline.strip()
        every = {(w, c) for w in self.args.workloads for c in self.args.levels}
        if spec == "all":
            return every
        if spec == "none":
            return set()
        picked = set()
        for part in spec.split(","):
            w, _, c = part.partition(":")
            picked.add((w.strip(), int(c)))
        return picked & every

    async def warm_up(self, send: Sender) -> None:
        """Compile and capture before timing: one short and one longest prompt, then a full batch."""
        a = self.args
        texts, _ = make_prompts(
            self.model, [a.prompt_len, a.mix_max, *[a.mix_min] * max(a.levels)], a.seed + 99
        )
        await closed_loop(send, texts[:2], a.new_tokens, 1)
        await closed_loop(send, texts[2:], a.new_tokens, max(a.levels))

    async def run_levels(
        self, side: str, send: Sender, pick: set[tuple[str, int]] | None, parts: Parts
    ) -> None:
        a = self.args
        for workload in a.workloads:
            for level in a.levels:
                if pick is not None and (workload, level) not in pick:
                    continue
                texts, counts = self.level_prompts(workload, level)
                kernels = triton_cache_entries()
                before = await parts()
                records, wall = await closed_loop(send, texts, a.new_tokens, level)
                stats = level_stats(records, wall, a.new_tokens)
                row = {
                    "side": side,
                    "workload": workload,
                    "concurrency": level,
                    "prompt_tokens_mean": sum(counts) / len(counts),
                    **stats,
                    "ttft_split_ms": ttft_split(stats["ttft_ms"]["mean"], before, await parts()),
                    "gpu_memory_used_mib_after": gpu_memory_used_mib(),
                    "triton_kernels_compiled": triton_cache_entries() - kernels,
                }
                self.rows.append(row)
                print(one_line(row), flush=True)

    async def run_http(self) -> None:
        a = self.args
        max_len = max(a.prompt_len, a.mix_max) + a.new_tokens + 64
        self.info["gpu_memory_used_mib_before_server"] = gpu_memory_used_mib()
        server = Server(a, self.model, self.workdir, max_len)
        try:
            self.info["server_ready_s"] = server.wait_ready(a.startup_timeout)
            print(f"server ready in {self.info['server_ready_s']:.1f}s at {server.url}", flush=True)
            send, client = http_sender(server.url, a.temperature)
            t0 = time.perf_counter()
            await self.warm_up(send)
            self.info["http_warm_up_s"] = time.perf_counter() - t0
            idle = gpu_memory_used_mib()
            self.memory.append({"when": "server idle after warm-up", "mib": idle})
            await self.run_levels("http", send, None, server_parts(server.url))
            await asyncio.sleep(2)  # let the engine finish its last step and free the sequences
            after = gpu_memory_used_mib()
            self.memory.append({"when": "server idle after the load", "mib": after})
            await client.close()
        finally:
            self.info["server_exit_code"] = server.stop()
            self.info["server_log_tail"] = server.log_tail()
        self.info["gpu_memory_used_mib_after_server"] = gpu_memory_used_mib()

    async def run_offline(self) -> None:
        pick = self.offline_levels()
        if not pick:
            return
        from jamba_runtime import AsyncLLM, EngineArgs, EngineConfig

        a = self.args
        cpu = a.device == "cpu"
        engine = EngineConfig(max_num_seqs=max(a.levels), cache_memory_gb=a.cache_memory_gb)
        llm_args = EngineArgs(
            model=str(self.model),
            device=a.device,
            dtype="float32" if cpu else "bfloat16",
            max_model_len=max(a.prompt_len, a.mix_max) + a.new_tokens + 64,
            engine=engine,
            load_format="dummy",
        )
        t0 = time.perf_counter()
        llm = AsyncLLM.from_args(llm_args)
        try:
            self.info["offline_load_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            llm.engine.warm_up()  # as `serve` does before listening (its loop thread starts later)
            self.info["offline_engine_warm_up_s"] = time.perf_counter() - t0
            send = engine_sender(llm, a.temperature)
            await self.warm_up(send)
            await self.run_levels("offline", send, pick, engine_parts(llm))
        finally:
            await llm.aclose()


def one_line(r: dict[str, Any]) -> str:
    def f(x: float | None, spec: str = ".1f") -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)

    return (
        f"{r['side']:7s} {r['workload']:5s} c={r['concurrency']:<4d} {r['requests']} req in {r['wall_s']:.1f}s: "
        f"{f(r['requests_per_s'], '.2f')} req/s, {f(r['output_tokens_per_s'], ',.0f')} out tok/s, TTFT p50/p99 "
        f"{f(r['ttft_ms']['p50'])}/{f(r['ttft_ms']['p99'])} ms, TPOT {f(r['tpot_ms']['p50'], '.2f')}/"
        f"{f(r['tpot_ms']['p99'], '.2f')} ms, ITL p99 {f(r['itl_ms']['p99'], '.2f')} ms, errors {r['errors']}, "
        f"Triton kernels compiled {r.get('triton_kernels_compiled', 0)}; TTFT mean "
        + ", ".join(f"{k} {f(v)}" for k, v in r.get("ttft_split_ms", {}).items())
        + " ms"
    )


def table(rows: list[dict[str, Any]]) -> str:
    """One line per (workload, concurrency): HTTP beside offline, and their ratios."""

    def f(x: float | None, spec: str = ".1f") -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)

    # The n-th HTTP level of a (workload, concurrency) against the n-th offline one (`--levels
    # 8,8` runs each twice, and a level's first run may still warm something up).
    offline: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        if r["side"] == "offline":
            offline.setdefault((r["workload"], r["concurrency"]), []).append(r)
    seen: dict[tuple[str, int], int] = {}
    lines = []
    for r in rows:
        if r["side"] != "http":
            continue
        key = (r["workload"], r["concurrency"])
        nth = seen[key] = seen.get(key, -1) + 1
        pool = offline.get(key, [])
        o = pool[min(nth, len(pool) - 1)] if pool else None
        ratio_tps = (
            r["output_tokens_per_s"] / o["output_tokens_per_s"] if o and o["output_tokens_per_s"] else None
        )
        ratio_tpot = r["tpot_ms"]["p50"] / o["tpot_ms"]["p50"] if o and o["tpot_ms"]["p50"] else None
        lines.append(
            (
                r["workload"],
                str(r["concurrency"]),
                f(r["requests_per_s"], ".2f"),
                f(r["output_tokens_per_s"], ",.0f"),
                f(o["output_tokens_per_s"], ",.0f") if o else "-",
                f(ratio_tps, ".3f"),
                f"{f(r['ttft_ms']['p50'])} / {f(r['ttft_ms']['p99'])}",
                f"{f(r['tpot_ms']['p50'], '.2f')} / {f(r['tpot_ms']['p99'], '.2f')}",
                f(o["tpot_ms"]["p50"], ".2f") if o else "-",
                f(ratio_tpot, ".3f"),
                f(r["itl_ms"]["p99"], ".2f"),
                str(r["errors"]),
            )
        )
    head = ("workload", "conc", "req/s", "out tok/s", "offline out tok/s", "http/offline", "TTFT ms p50 / p99",
            "TPOT ms p50 / p99", "offline TPOT p50", "TPOT http/offline", "ITL p99 ms", "errors")  # fmt: skip
    return markdown_table(head, lines, left=(0,))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or out_dir() / "serve_gpu.json"
    workdir = Path(tempfile.mkdtemp(prefix="jamba-serve-bench-"))
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "bench": "serve_gpu",
        "command": " ".join(["python -m bench.serve.gpu", *(argv if argv is not None else sys.argv[1:])]),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "method": (__doc__ or "").split("\n\n", 2)[-1],
    }
    failed: str | None = None
    bench = Bench(args, workdir)
    try:
        if args.device != "cpu":
            import torch

            result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
        asyncio.run(bench.run_http())
        asyncio.run(bench.run_offline())
    except Exception as e:  # noqa: BLE001 - record what ran, then fail
        failed = f"{type(e).__name__}: {e}"
        print(f"FAILED: {failed[:3000]}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.update(rows=bench.rows, memory=bench.memory, info=bench.info, failed=failed)
    result["table"] = table(bench.rows)
    result["ttft_table"] = split_table(bench.rows)
    result["elapsed_s"] = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print("\n" + result["table"] + "\n")
    print("Where the mean time to first token went (ms):\n" + result["ttft_table"] + "\n")
    for m in bench.memory:
        print(f"GPU memory in use, {m['when']}: {m['mib']} MiB")
    info = {k: v for k, v in bench.info.items() if k != "server_log_tail"}
    print(f"info: {json.dumps(info, default=str)}")
    print(f"total {result['elapsed_s']:.0f}s; wrote {out}", flush=True)
    errors = sum(r["errors"] for r in bench.rows)
    return 1 if failed or errors or not bench.rows else 0


if __name__ == "__main__":
    sys.exit(main())
