"""Decode steps launched before the last step's tokens are read (`engine/ahead.py`), on CPU: the
same tokens, texts and finish reasons as an engine that reads every step's tokens first, whatever
ends a request, arrives, leaves or is preempted; the cache is checked after every step."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from engine_checks import assert_clean, cache_gb, random_prompts, run_staggered

from jamba_runtime import LLM, EngineConfig, LLMEngine, SamplingParams
from jamba_runtime.engine.sequence import Sequence
from jamba_runtime.structured.matcher import GrammarMatcher
from jamba_runtime.structured.spec import StructuredOutput

SIZES = {"max_num_seqs": 8, "max_num_batched_tokens": 24, "block_size": 8, "cache_memory_gb": 0.02}


def engine_pair(model_dir: Path, **sizes: object) -> tuple[LLMEngine, LLMEngine]:
    """Two engines of the same sizes: steps launched ahead, and every step read first."""
    cfg = {**SIZES, **sizes}
    on = LLM(model=model_dir, engine=EngineConfig(**cfg, async_scheduling=True)).engine  # type: ignore[arg-type]
    off = LLM(model=model_dir, engine=EngineConfig(**cfg, async_scheduling=False)).engine  # type: ignore[arg-type]
    return on, off


def run(
    engine: LLMEngine,
    prompts: list[list[int]],
    params: list[SamplingParams],
    arrivals: random.Random | None = None,
) -> list[Sequence]:
    """`run_staggered` (all at once without `arrivals`), then the engine must be clean."""
    seqs = run_staggered(engine, prompts, params, arrivals)
    assert_clean(engine)
    return seqs


def outcome(seqs: list[Sequence]) -> list[tuple[list[int], str, str | None]]:
    return [(s.output_token_ids, s.text, s.finish_reason) for s in seqs]


@pytest.fixture(scope="module")
def pair(tiny_model_dir: Path) -> tuple[LLMEngine, LLMEngine]:
    return engine_pair(tiny_model_dir)


def test_greedy_and_seeded_outputs_equal_reading_every_step(pair: tuple[LLMEngine, LLMEngine]) -> None:
    on, off = pair
    prompts = random_prompts(8, (1, 30), seed=3)
    params = [
        SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) if i % 2 else
        SamplingParams(max_tokens=n, temperature=0.9, top_p=0.9, seed=i, ignore_eos=True)
        for i, n in enumerate([1, 2, 3, 9, 14, 5, 17, 8])
    ]  # fmt: skip
    before = on.metrics(), off.metrics()
    ahead = run(on, prompts, params)
    assert on.metrics().steps_ahead_total - before[0].steps_ahead_total >= 10  # the long decodes ran ahead
    assert off.metrics().steps_ahead_total == 0
    assert outcome(ahead) == outcome(run(off, prompts, params))
    # The same requests, tokens and first tokens counted (a first token read late is still first).
    counts = [
        (m.prompt_tokens_total - b.prompt_tokens_total, m.generation_tokens_total - b.generation_tokens_total,
         m.queue_time.count - b.queue_time.count, m.prefill_time.count - b.prefill_time.count)
        for m, b in zip((on.metrics(), off.metrics()), before, strict=True)
    ]  # fmt: skip
    assert counts[0] == counts[1] and counts[0][3] == len(prompts)
    assert [len(s.output_token_ids) for s in ahead] == [1, 2, 3, 9, 14, 5, 17, 8]


def test_a_request_ended_by_a_token_or_a_string_drops_the_step_it_ran_ahead(
    pair: tuple[LLMEngine, LLMEngine],
) -> None:
    """A stop token id or a stop string is seen only when the token is read, after the next step
    was launched: that step's token is dropped and the request ends exactly as it would have."""
    on, off = pair
    prompts = random_prompts(4, (5, 20), seed=8)
    free = [SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)] * 4
    full = run(off, prompts, free)
    stop_id = full[0].output_token_ids[6]
    stop_text = full[1].text[len(full[1].text) // 2 :][:3]
    assert stop_text.strip(), "the tiny model's text gives a stop string"
    params = [
        SamplingParams(max_tokens=16, temperature=0, stop_token_ids=(stop_id,)),
        SamplingParams(max_tokens=16, temperature=0, stop=(stop_text,)),
        *free[2:],
    ]
    ahead, read = run(on, prompts, params), run(off, prompts, params)
    assert outcome(ahead) == outcome(read)
    assert ahead[0].finish_reason == "stop" and ahead[0].output_token_ids[-1] == stop_id
    assert len(ahead[0].output_token_ids) <= 7
    assert ahead[1].finish_reason == "stop" and stop_text not in ahead[1].text


def test_requests_that_must_be_read_every_step_run_beside_the_others(
    pair: tuple[LLMEngine, LLMEngine],
) -> None:
    """A repetition penalty or logprobs keep steps from running ahead while that request runs (a
    grammar does not); the outputs are still those of an engine that never runs ahead."""
    on, off = pair
    prompts = random_prompts(4, (5, 20), seed=12)
    params = [
        SamplingParams(max_tokens=12, temperature=0, ignore_eos=True),
        SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, repetition_penalty=1.3),
        SamplingParams(max_tokens=5, temperature=0, ignore_eos=True, logprobs=2),
        SamplingParams(max_tokens=6, temperature=0, structured=StructuredOutput(choice=("yes", "no"))),
    ]
    before = on.metrics().steps_ahead_total
    ahead = run(on, prompts, params)
    assert outcome(ahead) == outcome(run(off, prompts, params))
    assert on.metrics().steps_ahead_total > before  # once the others ended, the first ran ahead


def test_a_full_batch_runs_ahead_while_requests_wait(pair: tuple[LLMEngine, LLMEngine]) -> None:
    """With every slot taken, waiting requests cannot start anyway: the running ones run ahead,
    and each waiting one starts once a sequence ends, with the outputs of reading every step."""
    on, off = pair
    prompts = random_prompts(14, (3, 10), seed=41)
    params = [
        SamplingParams(max_tokens=6 + 3 * (i % 5), temperature=0.8 if i % 2 else 0.0, seed=i, ignore_eos=True)
        for i in range(14)
    ]
    seqs = [
        on.add_request(p, q, request_id=f"w{i}") for i, (p, q) in enumerate(zip(prompts, params, strict=True))
    ]
    ahead_while_waiting = 0
    while on.has_unfinished():
        waiting, before = on.metrics().waiting, on.metrics().steps_ahead_total
        on.step()
        on.check_cache()
        ahead_while_waiting += waiting > 0 and on.metrics().steps_ahead_total > before
    assert_clean(on)
    assert ahead_while_waiting >= 3  # 8 slots for 14 requests
    assert outcome(seqs) == outcome(run(off, prompts, params))


def test_arrivals_and_aborts_between_steps_give_the_same_outputs(pair: tuple[LLMEngine, LLMEngine]) -> None:
    """Requests arrive while a step is in flight (the engine reads it, then schedules them) and
    one is aborted while its next step runs: the others' outputs are unchanged, the aborted one
    holds no stand-in token, and every block and slot comes back."""
    on, off = pair
    prompts = random_prompts(12, (1, 30), seed=21)
    params = [
        SamplingParams(max_tokens=4 + i % 7, temperature=0.8, seed=50 + i, ignore_eos=True) for i in range(12)
    ]
    ahead = run(on, prompts, params, random.Random(4))
    assert outcome(ahead) == outcome(run(off, prompts, params, random.Random(4)))

    victim = on.add_request(prompts[0], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))
    other = on.add_request(prompts[1], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))
    while len(victim.output_token_ids) < 3:
        on.step()
    in_flight = on._ahead.in_flight  # white-box: the victim's next token is on its way
    assert in_flight is not None and victim in in_flight.seqs
    on.abort(victim.request_id)
    assert victim.finish_reason == "abort"
    kept = list(victim.output_token_ids)
    while on.has_unfinished():
        assert all(o.request_id != victim.request_id for o in on.step())
        on.check_cache()
    assert victim.output_token_ids == kept
    alone = run(off, [prompts[1]], [SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)])
    assert other.output_token_ids == alone[0].output_token_ids
    assert_clean(on)


def test_a_cache_too_small_for_the_next_tokens_preempts_as_before(tiny_model_dir: Path) -> None:
    """24 blocks of 4 tokens for 6 requests of up to 54 tokens: a step is not launched ahead when
    its new blocks are not free, the scheduler preempts, and the outputs are those of an engine
    that never runs ahead."""
    cfg = {"max_num_seqs": 6, "max_num_batched_tokens": 32, "block_size": 4, "num_snapshot_slots": 1}
    probe = LLM(model=tiny_model_dir, engine=EngineConfig(**cfg, cache_memory_gb=0.02)).engine  # type: ignore[arg-type]
    gb = cache_gb(probe.model, 7, 24, 4)
    on, off = engine_pair(tiny_model_dir, **cfg, cache_memory_gb=gb)
    prompts = random_prompts(10, (10, 30), seed=10)
    params = [SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)] * 10
    ahead = run(on, prompts, params, random.Random(1))
    assert on.metrics().preemptions_total > 0 and on.metrics().steps_ahead_total > 0
    assert outcome(ahead) == outcome(run(off, prompts, params, random.Random(1)))


class _DecoderBreakingAt:
    """A detokenizer that fails on its `n`-th token (as a tokenizer bug would)."""

    def __init__(self, inner: object, n: int) -> None:
        self.inner, self.left = inner, n

    def add(self, token_id: int) -> str:
        self.left -= 1
        if self.left == 0:
            raise RuntimeError("decoder broke")
        return self.inner.add(token_id)  # type: ignore[attr-defined]

    def flush(self) -> str:
        return self.inner.flush()  # type: ignore[attr-defined]


def test_a_request_failing_when_its_token_is_read_ends_alone(pair: tuple[LLMEngine, LLMEngine]) -> None:
    """A request that fails while a step launched ahead holds its next token ends with "error" as
    it does when every step is read first (the same tokens kept, none computed ahead), and the
    others go on as if it had never run beside them."""
    prompts = random_prompts(3, (5, 12), seed=11)
    params = [SamplingParams(max_tokens=12, temperature=0.7, seed=s, ignore_eos=True) for s in (1, 2, 3)]
    alone = [run(pair[1], [p], [q])[0].output_token_ids for p, q in zip(prompts, params, strict=True)]
    results = []
    launched = pair[0].metrics().steps_ahead_total
    for engine in pair:
        seqs = [engine.add_request(p, q) for p, q in zip(prompts, params, strict=True)]
        seqs[1].decoder = _DecoderBreakingAt(seqs[1].decoder, 5)
        while engine.has_unfinished():
            engine.step()
            engine.check_cache()
        assert_clean(engine)
        assert seqs[1].finish_reason == "error" and "decoder broke" in (seqs[1].error or "")
        assert [seqs[0].output_token_ids, seqs[2].output_token_ids] == [alone[0], alone[2]]
        results.append(outcome(seqs))
    assert results[0] == results[1] and pair[0].metrics().steps_ahead_total - launched >= 8
    assert len(results[0][1][0]) == 5  # the tokens before the one that broke, and that one


SCHEMAS = Path(__file__).resolve().parents[2] / "data" / "schemas"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}


def test_constrained_rows_run_ahead_and_close_within_their_budget_as_before(
    pair: tuple[LLMEngine, LLMEngine],
) -> None:
    """JSON Schema and tool-call requests run ahead while their grammar will take the token
    sampled (their masks are made once the last token is taken, while the next forward runs),
    and are read step by step near `max_tokens`, where the closing path may replace a token:
    the same outputs, and those that end "stop" parse, as with every step read first."""
    on, off = pair
    names = ["deep_nesting", "array_of_enums", "anyof_objects", "format_email"]
    schemas = [StructuredOutput(json_schema=json.loads((SCHEMAS / f"{n}.json").read_text())) for n in names]
    tools = StructuredOutput(tools=(WEATHER,), tool_choice="required")
    prompts = random_prompts(8, (4, 12), seed=31)
    lengths = [18, 24, 60, 120, 90, 150, 100, 40]
    for specs, least_ahead in ((schemas, 30), ([*schemas, tools], 1)):
        params = [
            SamplingParams(max_tokens=n, temperature=1.0, seed=70 + i, structured=specs[i % len(specs)])
            for i, n in enumerate(lengths)
        ]
        before = on.metrics().steps_ahead_total
        ahead = run(on, prompts, params)
        assert outcome(ahead) == outcome(run(off, prompts, params))
        # A tool call's closing path is long: its request is within reach of max_tokens, and read
        # step by step, for most of its output.
        assert on.metrics().steps_ahead_total - before >= least_ahead
        stopped = [s for s in ahead if s.finish_reason == "stop" and s.params.structured.json_schema]  # type: ignore[union-attr]
        assert stopped and all(isinstance(json.loads(s.text), dict | list) for s in stopped)


def test_a_grammar_replaces_a_sampled_token_only_when_it_said_it_might(
    pair: tuple[LLMEngine, LLMEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What lets a constrained row run ahead: `GrammarMatcher.take` returns the sampled token (or
    ends the request) whenever `may_replace()` was False before it. Observed over tight budgets,
    where the closing path does replace tokens."""
    _, off = pair
    seen: list[tuple[bool, int, int]] = []
    take = GrammarMatcher.take

    def observed(self: GrammarMatcher, token_id: int, remaining: int) -> int:
        may = self.may_replace()
        out = take(self, token_id, remaining)
        seen.append((may, token_id, out))
        return out

    monkeypatch.setattr(GrammarMatcher, "take", observed)
    names = sorted(p.stem for p in SCHEMAS.glob("*.json"))[16:24]  # enums and formats: replaced at times
    prompts = random_prompts(8, (4, 12), seed=31)
    for k in range(0, len(names), 8):
        specs = [
            StructuredOutput(json_schema=json.loads((SCHEMAS / f"{n}.json").read_text()))
            for n in names[k : k + 8]
        ]
        params = [
            SamplingParams(
                max_tokens=20 + 5 * i, temperature=1.0, seed=7 + i, structured=specs[i % len(specs)]
            )
            for i in range(8)
        ]
        run(off, prompts, params)
    replaced = [(may, t, out) for may, t, out in seen if out >= 0 and out != t]
    assert replaced, "the budgets were tight enough for the closing path to replace a token"
    assert all(may for may, _, _ in replaced)
    assert any(not may for may, _, _ in seen)  # and tokens that could have run ahead were seen
