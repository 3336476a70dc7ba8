"""LLMEngine on CPU: mixed-batch logits against transformers, batch invariance, chunked prefill,
preemption, prefix snapshots and bad input; the cache is checked after every step."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from engine_checks import assert_clean, cache_gb, random_prompts, run_staggered

from jamba_runtime import LLM, EngineConfig, LLMEngine, SamplingParams, load_model
from jamba_runtime.engine.config import CPU_LONG_PREFILL_TOKENS
from jamba_runtime.engine.runner import forward_groups
from jamba_runtime.engine.scheduler import SchedulerOutput
from jamba_runtime.engine.sequence import Sequence
from jamba_runtime.errors import ContextLengthError, InvalidRequestError, RequestNotFoundError

transformers = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)

GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)


def seeded(seed: int, max_tokens: int = 6) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=1.0, top_k=50, seed=seed, ignore_eos=True)


def drain(engine: LLMEngine) -> None:
    while engine.has_unfinished():
        engine.step()
        engine.check_cache()


def run_alone(engine: LLMEngine, prompt: list[int], params: SamplingParams) -> list[int]:
    seq = engine.add_request(prompt, params)
    drain(engine)
    return seq.output_token_ids


class _Decoder:
    def add(self, token_id: int) -> str:
        return ""

    def flush(self) -> str:
        return ""


class _NoTextTokenizer:
    """Enough of a tokenizer for the engine on a checkpoint without one."""

    eos_token_ids: list[int] = []

    def incremental_decoder(self, skip_special_tokens: bool = True) -> _Decoder:
        return _Decoder()


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """The tiny model's matmuls are too small to split: a second thread only adds waiting (and
    much of it when other processes share the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> LLM:
    return LLM(
        model=tiny_model_dir,
        engine=EngineConfig(max_num_seqs=8, max_num_batched_tokens=24, block_size=8, cache_memory_gb=0.02),
    )


@pytest.fixture(autouse=True)
def _engine_left_clean(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "llm" in request.fixturenames:
        engine = request.getfixturevalue("llm").engine
        for key in list(engine.snapshots):
            engine.drop_snapshot(key)
        assert_clean(engine)


# ---- logits ---------------------------------------------------------------------------------------
def _hf_random_dir(directory: Path) -> Path:
    """A transformers Jamba unlike the tiny one: MHA, dense feed-forward, d_conv 3, attention at 2, 5."""
    torch.manual_seed(5)
    cfg = transformers.JambaConfig(
        vocab_size=211,
        intermediate_size=56,
        num_hidden_layers=6,
        attn_layer_period=3,
        attn_layer_offset=2,
        num_experts=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        mamba_d_state=8,
        mamba_dt_rank=6,
        mamba_d_conv=3,
        mamba_conv_bias=False,
        hidden_size=48,
    )
    model = transformers.JambaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # the default init is near zero; spread the logits out
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(directory)
    return directory


def assert_close_logits(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """The foundation's parity tolerance: max abs diff <= 1e-4 * max abs reference logit."""
    err = (ours.float() - ref.float()).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= 1e-4 * scale, f"max abs diff {err:.3e} > 1e-4 * {scale:.3e}"


@pytest.mark.parametrize("checkpoint", ["tiny", "random_dense_mha"])
def test_mixed_batch_logits_equal_transformers_per_sequence(
    checkpoint: str, tiny_model_dir: Path, hf_tiny: torch.nn.Module, tmp_path: Path
) -> None:
    """Prompts of 1 to 40 tokens arriving over several steps, budget 16, blocks of 4: steps mix
    whole prefills of different lengths, chunks of longer prompts, the last chunk of a prompt and
    decodes. The logits the runner returns at every sampled position equal a full transformers
    forward over that sequence's tokens alone."""
    if checkpoint == "tiny":
        path, ref_model = tiny_model_dir, hf_tiny
    else:
        path = _hf_random_dir(tmp_path)
        ref_model = transformers.JambaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model = load_model(path)
    vocab = model.config.vocab_size
    config = EngineConfig(max_num_seqs=8, max_num_batched_tokens=16, block_size=4)
    engine = LLMEngine(
        model,
        _NoTextTokenizer(),
        EngineConfig(**{**config.__dict__, "cache_memory_gb": cache_gb(model, 8 + 4, 64, 4)}),
    )
    captured: list[tuple[Sequence, int, torch.Tensor]] = []  # (seq, tokens known, next-token logits)
    steps: list[list[tuple[str, int]]] = []  # per step: (kind, tokens) of each scheduled sequence
    execute = engine.runner.execute

    def spy(plan: SchedulerOutput) -> tuple[list[Sequence], torch.Tensor]:
        step = []
        for item in plan.scheduled:
            start, seq = item.seq.num_computed_tokens, item.seq
            if start + item.num_tokens < seq.num_tokens:
                kind = "chunk"
            elif seq.output_token_ids:
                kind = "decode"
            else:
                kind = "last_chunk" if start else "prefill"
            step.append((kind, item.num_tokens))
        steps.append(step)
        to_sample, logits = execute(plan)
        assert logits.shape == (len(to_sample), vocab)
        captured.extend((s, s.num_tokens, row.clone()) for s, row in zip(to_sample, logits, strict=True))
        return to_sample, logits

    engine.runner.execute = spy
    lengths = [6, 40, 11, 1, 3, 23]
    arrive = [0, 0, 2, 3, 5, 5]
    prompts = [p[:n] for p, n in zip(random_prompts(6, (40, 40), seed=3, vocab=vocab), lengths, strict=True)]
    seqs: list[Sequence] = []
    for t in range(200):
        seqs += [engine.add_request(prompts[i], GREEDY) for i in range(6) if arrive[i] == t]
        if len(seqs) == 6 and not engine.has_unfinished():
            break
        engine.step()
        engine.check_cache()
    kinds = [{k for k, _ in step} for step in steps]
    assert any({"decode", "chunk", "prefill"} <= k for k in kinds)
    assert any({"decode", "last_chunk"} <= k for k in kinds)
    assert any(len({n for k, n in step if k == "prefill"}) > 1 for step in steps)
    assert len(captured) == 6 * GREEDY.max_tokens
    for seq in seqs:
        ids = seq.all_token_ids()
        with torch.no_grad():
            ref = ref_model(torch.tensor([ids])).logits[0]
        rows = [(n, row) for s, n, row in captured if s is seq]
        assert [n for n, _ in rows] == list(range(len(seq.prompt_token_ids), len(ids)))
        for n, row in rows:
            assert_close_logits(row, ref[n - 1])
    assert_clean(engine)


# ---- batch invariance, chunking, preemption -------------------------------------------------------
def test_sixteen_prompts_at_random_times_equal_each_alone(llm: LLM) -> None:
    """Greedy and seeded outputs do not depend on what else runs, when it arrives, or how the
    prompt was chunked (budget 24, at most 8 running: queueing, chunks and decodes mix)."""
    engine = llm.engine
    prompts = random_prompts(16, (1, 40), seed=16)
    for seed, params in enumerate([[GREEDY] * 16, [seeded(100 + i) for i in range(16)]]):
        together = run_staggered(engine, prompts, params, random.Random(seed))
        assert_clean(engine)
        alone = [run_alone(engine, p, sp) for p, sp in zip(prompts, params, strict=True)]
        assert [s.output_token_ids for s in together] == alone
        assert all(len(t) == 6 for t in alone)
    assert len({tuple(t) for t in alone}) == 16


def test_chunked_prefill_equals_unchunked(tiny_model_dir: Path, llm: LLM) -> None:
    small = llm.engine  # budget 24: the 40..70-token prompts below are fed in 2 to 3 chunks
    big = LLM(
        model=tiny_model_dir, engine=EngineConfig(max_num_batched_tokens=4096, cache_memory_gb=0.02)
    ).engine
    tiny_budget = LLM(
        model=tiny_model_dir,
        engine=EngineConfig(max_num_batched_tokens=5, block_size=4, cache_memory_gb=0.02),
    ).engine
    prompts = random_prompts(4, (40, 70), seed=4)
    params = [GREEDY, seeded(1), GREEDY, seeded(2)]
    outs = []
    for engine in (big, small, tiny_budget):
        seqs = [engine.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
        drain(engine)
        assert_clean(engine)
        outs.append([s.output_token_ids for s in seqs])
    assert outs[0] == outs[1] == outs[2]


def test_preemption_and_recompute_give_the_same_outputs(tiny_model_dir: Path, llm: LLM) -> None:
    """Ten requests on a cache of 24 blocks of 4 tokens (96 tokens; each request needs up to 54):
    sequences are preempted, recomputed from their tokens, and finish with the same tokens."""
    cfg = EngineConfig(max_num_seqs=6, max_num_batched_tokens=32, block_size=4, num_snapshot_slots=1)
    gb = cache_gb(llm.model, cfg.max_num_seqs + cfg.num_snapshot_slots, 24, 4)
    tight = LLM(model=tiny_model_dir, engine=EngineConfig(**{**cfg.__dict__, "cache_memory_gb": gb})).engine
    assert tight.cache_manager.num_blocks == 24 and tight.max_model_len == 96
    prompts = random_prompts(10, (10, 30), seed=10)
    params = [
        SamplingParams(max_tokens=24, temperature=0, ignore_eos=True) if i % 2 else seeded(i, 24)
        for i in range(10)
    ]
    reference = [s.output_token_ids for s in run_staggered(llm.engine, prompts, params, random.Random(1))]
    seqs = run_staggered(tight, prompts, params, random.Random(1))
    assert tight.metrics().preemptions_total > 0
    assert sum(s.num_preemptions for s in seqs) == tight.metrics().preemptions_total
    assert [s.output_token_ids for s in seqs] == reference
    assert_clean(tight)


# ---- prefix snapshots -----------------------------------------------------------------------------
@pytest.mark.parametrize("prefix_len", [32, 37])  # block_size 8: whole blocks, then a shared partial one
def test_restored_prefix_equals_recompute(llm: LLM, prefix_len: int) -> None:
    engine = llm.engine
    rng = random.Random(prefix_len)
    prefix = [rng.randrange(3, 1024) for _ in range(prefix_len)]
    prompts = [prefix + [rng.randrange(3, 1024) for _ in range(n)] for n in (1, 9, 30)]
    params = [GREEDY, seeded(7), GREEDY]
    fresh = llm.generate(prompts, params)
    llm.save_prefix(prefix, "doc")
    assert engine.metrics().snapshots == 1
    starts: dict[str, int] = {}
    execute = engine.runner.execute
    together: list[int] = []  # restored requests in each step

    def spy(plan: SchedulerOutput) -> tuple[list[Sequence], torch.Tensor]:
        for item in plan.scheduled:
            starts.setdefault(item.seq.request_id, item.seq.num_computed_tokens)
        together.append(sum(1 for item in plan.scheduled if starts[item.seq.request_id] == prefix_len))
        return execute(plan)

    engine.runner.execute = spy
    try:
        # Three restored requests run at once (each copies the partial block, if any), twice: the
        # first run must not have written into the snapshot's blocks.
        for _ in range(2):
            starts.clear()
            restored = llm.generate(prompts, params, prefix_snapshot="doc")
            assert sorted(starts.values()) == [prefix_len] * 3  # the prefix was not recomputed
            assert max(together) == 3
            assert [o.token_ids for o in restored] == [o.token_ids for o in fresh]
            engine.check_cache()
        # A prompt that does not extend the prefix (or equals it) just runs from the start.
        starts.clear()
        other = [prefix[:-1] + [5 if prefix[-1] != 5 else 6, 5], prefix]
        outs = llm.generate(other, GREEDY, prefix_snapshot="doc")
        assert sorted(starts.values()) == [0, 0]
        assert [o.token_ids for o in outs] == [o.token_ids for o in llm.generate(other, GREEDY)]
    finally:
        engine.runner.execute = execute
    m = engine.metrics()
    assert m.snapshots == 1 and m.state_slots_used == 1 and m.kv_blocks_used == -(-prefix_len // 8)
    engine.drop_snapshot("doc")
    assert_clean(engine)


def test_aborting_restored_requests_keeps_the_snapshot(llm: LLM) -> None:
    engine = llm.engine
    prefix = random_prompts(1, (21, 21), seed=21)[0]
    llm.save_prefix(prefix, "p")
    expect = llm.generate([prefix + [9, 10]], GREEDY, prefix_snapshot="p")[0].token_ids
    a = engine.add_request(prefix + [9, 10], GREEDY, request_id="a", prefix_snapshot="p")
    b = engine.add_request(prefix + [9, 10], GREEDY, request_id="b", prefix_snapshot="p")
    assert a.num_computed_tokens == b.num_computed_tokens == 21
    engine.abort("a")  # while waiting, holding shared blocks
    engine.step()
    assert b in engine.scheduler.running
    engine.abort("b")  # while running
    engine.check_cache()
    m = engine.metrics()
    assert m.running == m.waiting == 0 and m.kv_blocks_used == 3 and m.state_slots_used == 1  # the snapshot
    assert llm.generate([prefix + [9, 10]], GREEDY, prefix_snapshot="p")[0].token_ids == expect
    assert llm.generate([prefix + [9, 10]], GREEDY)[0].token_ids == expect


def test_restored_request_waiting_behind_another_does_not_stall(tiny_model_dir: Path, llm: LLM) -> None:
    """12 blocks of 4 tokens; a 30-token snapshot (8 blocks) and a request restored from it (its
    own copy of the partial block) leave 3 blocks, while the request ahead of it needs 5 alone.
    The engine gives up the snapshot, then the restored prefix (recomputed later), rather than
    stop with nothing to run; both finish as when run fresh."""
    cfg = EngineConfig(max_num_seqs=4, max_num_batched_tokens=16, block_size=4, num_snapshot_slots=1)
    gb = cache_gb(llm.model, 5, 12, 4)
    tight = LLM(model=tiny_model_dir, engine=EngineConfig(**{**cfg.__dict__, "cache_memory_gb": gb}))
    engine = tight.engine
    assert engine.cache_manager.num_blocks == 12
    prefix, first = random_prompts(2, (30, 30), seed=30)
    first = first[:20]
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    tight.save_prefix(prefix, "k")
    a = engine.add_request(first, params)
    r = engine.add_request(prefix + [5, 6], params, prefix_snapshot="k")
    assert r.num_computed_tokens == 30 and engine.metrics().kv_blocks_used == 9
    drain(engine)
    assert [a.output_token_ids, r.output_token_ids] == [
        o.token_ids for o in llm.generate([first, prefix + [5, 6]], params)
    ]
    m = engine.metrics()
    assert m.snapshots == 0 and m.preemptions_total == a.num_preemptions + r.num_preemptions > 0
    assert_clean(engine)


# ---- bad input ------------------------------------------------------------------------------------
def test_bad_input_is_refused_without_leaking(tiny_model_dir: Path) -> None:
    llm = LLM(model=tiny_model_dir, max_model_len=48, engine=EngineConfig(block_size=4, cache_memory_gb=0.02))
    engine = llm.engine
    assert llm.max_model_len == 48
    with pytest.raises(InvalidRequestError, match="empty"):
        engine.add_request([], GREEDY)
    with pytest.raises(InvalidRequestError, match="prompt 1"):
        llm.generate([[5, 6], []], GREEDY)  # nothing of the batch is left behind
    with pytest.raises(InvalidRequestError, match="vocab"):
        engine.add_request([5, 1024], GREEDY)
    with pytest.raises(ContextLengthError, match="48"):
        engine.add_request(list(range(3, 51)), GREEDY)  # 48 tokens leave no room for one more
    with pytest.raises(ContextLengthError, match="prompt 0: prompt has 60 tokens"):
        llm.generate([list(range(3, 63))], GREEDY)
    with pytest.raises(RequestNotFoundError):
        engine.abort("never-added")
    assert_clean(engine)

    # max_tokens past the context: documented to stop at max_model_len with "length".
    long = SamplingParams(max_tokens=100, temperature=0, ignore_eos=True)
    out = llm.generate([list(range(3, 43))], long)[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 8  # 40 + 8 = 48
    out = llm.generate([list(range(3, 50))], long)[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 1  # 47 + 1 = 48
    assert_clean(engine)

    # Duplicate ids: refused while the first runs, which is unaffected; fine again once it is done.
    first = engine.add_request([5, 6, 7], GREEDY, request_id="dup")
    with pytest.raises(InvalidRequestError, match="dup"):
        engine.add_request([8, 9], GREEDY, request_id="dup")
    drain(engine)
    assert first.output_token_ids == run_alone(engine, [5, 6, 7], GREEDY)
    with pytest.raises(RequestNotFoundError):
        engine.abort("dup")  # finished requests are gone
    engine.add_request([5, 6, 7], GREEDY, request_id="dup")
    engine.step()
    engine.abort("dup")  # midway: its blocks and slot are back at once
    assert_clean(engine)


def test_saving_a_snapshot_without_snapshot_slots_is_refused(llm: LLM) -> None:
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(max_num_seqs=2, num_snapshot_slots=0))
    with pytest.raises(InvalidRequestError, match="num_snapshot_slots"):
        engine.add_request([1, 5, 9], SamplingParams(max_tokens=2), save_snapshot="p")
    assert not engine.has_unfinished()


class _BrokenDecoder(_Decoder):
    def add(self, token_id: int) -> str:
        raise RuntimeError("decoder broke")


def test_a_request_that_fails_in_its_step_ends_alone(llm: LLM) -> None:
    """`generate` returns every output: the failed one with finish_reason "error" and why, the
    others as they are alone; its cache is back (the autouse fixture checks)."""
    engine = llm.engine
    prompts = random_prompts(3, (5, 12), seed=11)
    params = [seeded(1), GREEDY, seeded(3)]
    alone = [run_alone(engine, p, q) for p, q in zip(prompts, params, strict=True)]
    seqs = [engine.add_request(p, q) for p, q in zip(prompts, params, strict=True)]
    seqs[1].decoder = _BrokenDecoder()
    drain(engine)
    assert seqs[1].finish_reason == "error" and "decoder broke" in (seqs[1].output().error or "")
    assert [seqs[0].output_token_ids, seqs[2].output_token_ids] == [alone[0], alone[2]]


# ---- long prompts beside running streams (reference path) -----------------------------------------
def test_forward_groups_keep_decodes_apart_from_long_chunks() -> None:
    assert sorted(map(sorted, forward_groups([1] * 7 + [256]))) == [[0, 1, 2, 3, 4, 5, 6], [7]]
    assert sorted(map(sorted, forward_groups([256, 1, 200, 1]))) == [[0, 2], [1, 3]]  # 2 x 256 <= 2 x 456
    assert forward_groups([3, 3, 3]) == [[0, 1, 2]]
    assert forward_groups([1, 2]) == [[0, 1]]  # 2 x 2 padded for 3 real: cheaper than two forwards
    for lens in ([5], [1] * 64, [9, 1, 40, 1, 1, 300, 2, 17]):
        groups = forward_groups(lens)
        assert sorted(i for g in groups for i in g) == list(range(len(lens)))
        assert all(len(g) * max(lens[i] for i in g) <= 2 * sum(lens[i] for i in g) for g in groups)


def test_a_long_prompt_runs_beside_decodes_in_capped_unpadded_chunks(tiny_model_dir: Path) -> None:
    """On CPU a prompt takes at most `CPU_LONG_PREFILL_TOKENS` tokens of a step, and the runner
    runs the decodes as one forward and the chunk as another (no decode padded to the chunk);
    the outputs equal an engine without the cap and each request alone."""
    llm = LLM(model=tiny_model_dir, engine=EngineConfig(max_num_seqs=8, cache_memory_gb=0.05))
    engine = llm.engine
    assert engine.scheduler.config.long_prefill_token_threshold == CPU_LONG_PREFILL_TOKENS
    uncapped = LLM(
        model=tiny_model_dir,
        engine=EngineConfig(max_num_seqs=8, cache_memory_gb=0.05, long_prefill_token_threshold=0),
    )
    assert uncapped.engine.scheduler.config.long_prefill_token_threshold == 0
    prompts = random_prompts(6, (3, 9), seed=21) + random_prompts(1, (700, 700), seed=22)
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    forwards: list[tuple[int, ...]] = []
    forward_packed = engine.model.forward_packed

    def recording(token_ids: torch.Tensor, batch, cache, logits_indices=None):  # noqa: ANN001, ANN202
        forwards.append(batch.query_lens)
        return forward_packed(token_ids, batch, cache, logits_indices)

    engine.model.forward_packed = recording  # type: ignore[method-assign]
    try:
        short = [engine.add_request(p, params) for p in prompts[:6]]
        engine.step()  # the six short prompts, whole
        engine.step()  # their first decodes
        long = engine.add_request(prompts[6], params)
        forwards.clear()
        while not long.output_token_ids:
            engine.step()
        drain(engine)
    finally:
        del engine.model.forward_packed
    # The prompt went in as 256 + 256 + 188, each step beside the six decodes, in its own forward.
    chunks = [lens for lens in forwards if len(lens) == 1 and lens[0] > 1]
    assert chunks == [(256,), (256,), (188,)]
    assert all(set(lens) == {1} for lens in forwards if lens not in chunks)
    assert max(max(lens) for lens in forwards if len(lens) > 1) == 1
    together = [s.output_token_ids for s in [*short, long]]
    assert together == [o.token_ids for o in uncapped.generate(prompts, params)]
    assert together == [llm.generate([p], params)[0].token_ids for p in prompts]
    assert_clean(engine)


def test_warm_up_leaves_the_engine_as_it_was(tiny_model_dir: Path) -> None:
    """`warm_up` (what `serve` runs before listening) runs its request to the end and leaves no
    trace: no request, every block and slot free, metrics at zero; then requests run as usual."""
    engine = LLM(model=tiny_model_dir, engine=EngineConfig(max_num_seqs=4, cache_memory_gb=0.02)).engine
    assert engine.warm_up() == 0, "no graphs on CPU"
    assert not engine.has_unfinished() and not engine.requests
    engine.check_cache()
    m = engine.metrics()
    assert m.kv_blocks_used == 0 and m.state_slots_used == 0
    assert m.prompt_tokens_total == 0 and m.generation_tokens_total == 0
    seq = engine.add_request([5, 6, 7], GREEDY)
    while engine.has_unfinished():
        engine.step()
    assert seq.finished and len(seq.output_token_ids) == GREEDY.max_tokens
    engine.add_request([5, 6, 7], GREEDY, request_id="busy")
    with pytest.raises(InvalidRequestError, match="idle engine"):
        engine.warm_up()
    engine.abort("busy")


def test_queue_and_prefill_times(llm: LLM) -> None:
    """Each request's time to first token splits into its queue time (arrival to its first step,
    from the `arrival_time` given) and its prefill time (to its first token); a request that
    waits behind a full batch queues for as long as it waits."""
    engine = llm.engine
    before = engine.metrics()
    t0 = time.monotonic()
    engine.add_request(list(range(5, 45)), GREEDY, request_id="early", arrival_time=t0 - 1.0)
    drain(engine)
    m = engine.metrics()
    assert m.queue_time.count == before.queue_time.count + 1
    assert m.prefill_time.count == before.prefill_time.count + 1
    assert 1.0 <= m.queue_time.sum_s - before.queue_time.sum_s < 1.0 + (time.monotonic() - t0)
    assert 0 < m.prefill_time.sum_s - before.prefill_time.sum_s < time.monotonic() - t0
    # Eight running requests fill the batch; the ninth queues until one of them finishes.
    full = [engine.add_request([7] * 30, GREEDY, request_id=f"run{i}") for i in range(8)]
    late = engine.add_request([9] * 30, GREEDY, request_id="late")
    while not late.output_token_ids:
        engine.step()
    waited = engine.metrics().queue_time.sum_s - m.queue_time.sum_s
    assert any(s.finished for s in full) and waited > 0
    drain(engine)
    end = engine.metrics()
    assert end.queue_time.count == end.prefill_time.count == m.queue_time.count + 9
