"""`AsyncLLM`: many concurrent streams on one engine thread, aborts (explicit, by breaking out, by
cancellation), errors at the call, and a failing step that must not hang anyone."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from jamba_runtime import LLM, EngineConfig, SamplingParams
from jamba_runtime.async_llm import AsyncLLM, EngineStoppedError, RequestOutputDelta
from jamba_runtime.errors import (
    ContextLengthError,
    InvalidRequestError,
    RequestFailedError,
    RequestNotFoundError,
)

# A small cache (the CPU default is 1 GiB) and fewer sequences than streams, so some wait.
CONFIG = EngineConfig(max_num_seqs=24, cache_memory_gb=0.02)
WORDS = ["The cache", "Mamba keeps a state", "a", "Hello, world! 12345", "attention layers", "tiny"]
SNAPSHOT_TEXT = "System: answer briefly."
T = TypeVar("T")


@pytest.fixture(scope="module")
def ref(tiny_model_dir: Path) -> LLM:
    """The synchronous reference, on its own engine."""
    return LLM(model=tiny_model_dir, engine=CONFIG)


@pytest.fixture(scope="module")
def allm(tiny_model_dir: Path) -> Iterator[AsyncLLM]:
    llm = AsyncLLM(model=tiny_model_dir, engine=CONFIG)
    yield llm
    llm.shutdown()


def _params(i: int) -> SamplingParams:
    max_tokens = 8 + 2 * (i % 3)
    match i % 4:
        case 0:
            return SamplingParams(max_tokens=max_tokens, temperature=0)
        case 1:
            return SamplingParams(max_tokens=max_tokens, temperature=0.9, top_p=0.9, seed=i)
        case 2:
            return SamplingParams(max_tokens=max_tokens, top_k=8, repetition_penalty=1.3, seed=100 + i)
        case _:
            return SamplingParams(max_tokens=max_tokens, temperature=0, logprobs=2)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` with a deadline, so a stream that never ends fails the test instead of hanging it."""
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


async def _collect(stream) -> list[RequestOutputDelta]:  # noqa: ANN001 - an async iterator
    return [d async for d in stream]


def test_32_concurrent_streams_with_aborts(allm: AsyncLLM, ref: LLM) -> None:
    snap_ids = ref.tokenizer.encode(SNAPSHOT_TEXT)
    prompts: list[str | list[int]] = []
    for i in range(32):
        text = f"{WORDS[i % len(WORDS)]} {i}"
        # Every fifth prompt extends the snapshot, as token ids; the rest are text.
        prompts.append(
            snap_ids + ref.tokenizer.encode(text, add_special_tokens=False) if i % 5 == 0 else text
        )
    long_run = SamplingParams(max_tokens=200, ignore_eos=True, temperature=0)  # only an abort ends it
    by_api, by_break, by_aclosing, by_cancel, while_waiting = {3, 11, 19}, {7, 23}, {15}, {27}, {31}
    stopped = by_api | by_break | by_aclosing | by_cancel | while_waiting
    completing = [i for i in range(32) if i not in stopped]
    engine_aborts: list[str] = []
    engine_abort = allm.engine.abort

    def recording_abort(request_id: str) -> None:
        engine_abort(request_id)
        engine_aborts.append(request_id)

    allm.engine.abort = recording_abort  # type: ignore[method-assign]

    async def main() -> dict[int, list[RequestOutputDelta]]:
        await allm.generate(SNAPSHOT_TEXT, SamplingParams(max_tokens=1, temperature=0), save_snapshot="sys")
        got: dict[int, list[RequestOutputDelta]] = {i: [] for i in range(32)}
        two_in = asyncio.Event()

        async def consume(i: int) -> None:
            params = long_run if i in stopped else _params(i)
            stream = allm.add_request(prompts[i], params, request_id=f"r{i}", prefix_snapshot="sys")
            if i in by_aclosing:
                async with contextlib.aclosing(stream):
                    async for d in stream:
                        got[i].append(d)
                        if len(got[i]) == 2:
                            break
                return
            async for d in stream:
                got[i].append(d)
                if len(got[i]) == 2 and i in by_api:
                    await allm.abort(f"r{i}")  # the stream goes on to its "abort" item
                if len(got[i]) == 2 and i in by_break:
                    break
                if len(got[i]) == 2 and i in by_cancel:
                    two_in.set()

        tasks = {i: asyncio.create_task(consume(i)) for i in range(32)}
        await asyncio.sleep(0)  # every request is queued now; r31 waits for a free sequence slot
        await allm.abort("r31")
        await two_in.wait()
        tasks[27].cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        assert tasks[27].cancelled()
        return got

    try:
        got = _run(main())
        allm.check_cache()  # runs after the aborts queued by the broken and cancelled streams
    finally:
        allm.engine.abort = engine_abort  # type: ignore[method-assign]

    # Stopped streams: the abort reached the engine (their 200 tokens never ran).
    assert {f"r{i}" for i in stopped} <= set(engine_aborts)
    for i in by_api | while_waiting:
        last = got[i][-1]
        assert (last.finished, last.finish_reason, last.text, last.token_ids) == (True, "abort", "", [])
        assert last.usage is not None
        assert last.usage.completion_tokens == sum(len(d.token_ids) for d in got[i])
    assert len(got[31]) == 1 and got[31][0].usage.completion_tokens == 0  # type: ignore[union-attr]
    for i in by_break | by_aclosing | by_cancel:
        assert len(got[i]) == 2 and not got[i][-1].finished

    # Completed streams: what LLM.generate gives for the same prompts and params.
    ref.save_prefix(SNAPSHOT_TEXT, "sys")
    want = ref.generate([prompts[i] for i in completing], [_params(i) for i in completing], "sys")
    for i, w in zip(completing, want, strict=True):
        deltas = got[i]
        assert [d.finished for d in deltas] == [False] * (len(deltas) - 1) + [True]
        assert "".join(d.text for d in deltas) == w.text
        assert [t for d in deltas for t in d.token_ids] == w.token_ids
        assert deltas[-1].finish_reason == w.finish_reason
        n_prompt = len(prompts[i]) if isinstance(prompts[i], list) else len(ref.tokenizer.encode(prompts[i]))
        assert (deltas[-1].usage.prompt_tokens, deltas[-1].usage.completion_tokens) == (  # type: ignore[union-attr]
            n_prompt,
            len(w.token_ids),
        )
        if _params(i).logprobs is not None:
            assert sum(len(d.logprobs or ()) for d in deltas) == len(w.token_ids)

    # Nothing left but the snapshot.
    m = allm.metrics()
    assert (m.running, m.waiting, m.snapshots) == (0, 0, 1)
    assert m.kv_blocks_used == allm.engine.cache_manager.blocks_for(len(snap_ids))
    assert m.state_slots_used == 1
    assert allm.engine.requests == {}


def test_generate_equals_joined_stream_and_counts_usage(allm: AsyncLLM, ref: LLM) -> None:
    prompt = "Mamba layers keep a constant-size state"
    params = SamplingParams(max_tokens=12, temperature=0.8, seed=7, logprobs=3)

    async def main() -> tuple[list[RequestOutputDelta], object]:
        deltas = [d async for d in allm.add_request(prompt, params)]
        return deltas, await allm.generate(prompt, params)

    deltas, out = _run(main())
    want = ref.generate(prompt, params)[0]
    assert len(deltas) > 1
    assert "".join(d.text for d in deltas) == out.text == want.text
    assert [t for d in deltas for t in d.token_ids] == out.token_ids == want.token_ids
    assert out.finish_reason == deltas[-1].finish_reason == want.finish_reason
    assert out.prompt_token_ids == ref.tokenizer.encode(prompt)
    assert out.usage is not None and deltas[-1].usage == out.usage
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (
        len(out.prompt_token_ids),
        len(want.token_ids),
    )
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.logprobs is not None and len(out.logprobs) == len(out.token_ids)
    assert all(d.usage is None for d in deltas[:-1])


def test_bad_requests_raise_at_the_call(allm: AsyncLLM) -> None:
    vocab = allm.engine.model.config.vocab_size
    before = allm.metrics().prompt_tokens_total

    async def main() -> None:
        bad: list[tuple[object, type[Exception]]] = [
            ("", InvalidRequestError),
            ([], InvalidRequestError),
            ([1, -1], InvalidRequestError),
            ([1, vocab], InvalidRequestError),
            ([1, 2.5], InvalidRequestError),
            ([1] * allm.max_model_len, ContextLengthError),
        ]
        for prompt, error in bad:
            with pytest.raises(error):
                allm.add_request(prompt)  # type: ignore[arg-type]  # raises before any iteration
        with pytest.raises(InvalidRequestError, match="snapshot"):
            allm.add_request("hi", prefix_snapshot="no-such-snapshot")
        with pytest.raises(InvalidRequestError, match="SamplingParams"):
            allm.add_request("hi", {"max_tokens": 4})  # type: ignore[arg-type]
        with pytest.raises(RequestNotFoundError):
            await allm.abort("never-added")
        running = allm.add_request("hi", SamplingParams(max_tokens=4, temperature=0), request_id="dup")
        with pytest.raises(InvalidRequestError, match="already running"):
            allm.add_request("hi", request_id="dup")
        async for _ in running:
            pass
        with pytest.raises(RequestNotFoundError):
            await allm.abort("dup")  # finished

    _run(main())
    with pytest.raises(RuntimeError, match="running event loop"):
        allm.add_request("hi")
    allm.check_cache()
    assert allm.metrics().prompt_tokens_total == before + len(allm.tokenizer.encode("hi"))


def test_abort_frees_the_cache_before_it_returns(allm: AsyncLLM) -> None:
    async def main() -> list[RequestOutputDelta]:
        stream = allm.add_request("Hello", SamplingParams(max_tokens=200, ignore_eos=True), request_id="a")
        got = [await anext(stream)]
        assert allm.metrics().running == 1
        await allm.abort("a")
        m = allm.metrics()  # before the stream's last item is read
        assert (m.running, m.waiting, m.state_slots_used) == (0, 0, m.snapshots)
        return got + [d async for d in stream]

    got = _run(main())
    # Tokens the engine made before the abort landed may still arrive (how many is a race);
    # none is lost or repeated, and the stream ends exactly once, with "abort".
    assert got[-1].finish_reason == "abort" and not any(d.finished for d in got[:-1])
    assert got[-1].usage is not None
    assert sum(len(d.token_ids) for d in got) == got[-1].usage.completion_tokens


def test_streams_of_a_closed_event_loop_are_aborted(allm: AsyncLLM) -> None:
    async def start() -> object:
        return allm.add_request("Hello", SamplingParams(max_tokens=200, ignore_eos=True), request_id="o")

    before = allm.metrics().generation_tokens_total
    stream = _run(start())  # never read; its event loop is closed now
    allm.check_cache()  # the engine thread has taken the request
    deadline = time.monotonic() + 20
    # Until the request has run and been aborted: it may still be waiting when the loop starts.
    while (allm.metrics().running or allm.metrics().waiting) and time.monotonic() < deadline:
        time.sleep(0.02)
    m = allm.metrics()
    assert m.running == 0 and m.waiting == 0 and before < m.generation_tokens_total < before + 200
    allm.check_cache()
    assert allm.engine.requests == {}
    del stream


def test_close_aborts_running_streams_and_refuses_new_ones(tiny_model_dir: Path) -> None:
    llm = LLM(model=tiny_model_dir, engine=CONFIG)

    async def main() -> list[RequestOutputDelta]:
        async with AsyncLLM.from_llm(llm) as allm:
            stream = allm.add_request("Hello", SamplingParams(max_tokens=200, ignore_eos=True))
            got = [await anext(stream)]
            await allm.aclose()
            got += [d async for d in stream]
        with pytest.raises(EngineStoppedError, match="closed"):
            allm.add_request("Hello")
        return got

    got = _run(main())
    assert got[-1].finish_reason == "abort" and got[-1].usage.completion_tokens == len(got) - 1  # type: ignore[union-attr]
    m = llm.engine.metrics()
    assert (m.running, m.waiting, m.kv_blocks_used, m.state_slots_used) == (0, 0, 0, 0)
    llm.engine.check_cache()


def test_idle_loop_does_not_spin(allm: AsyncLLM) -> None:
    _run(allm.generate("x", SamplingParams(max_tokens=1)))
    assert allm._thread is not None and allm._thread.is_alive()
    cpu = time.process_time()
    time.sleep(0.3)
    assert time.process_time() - cpu < 0.1


def test_idle_engine_gives_its_cached_memory_back_once_after_a_pause(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After work the loop calls `release_idle_memory` once the engine has been idle for
    IDLE_RELEASE_S (not between back-to-back requests, not again while it stays idle)."""
    import jamba_runtime.async_llm as async_llm

    monkeypatch.setattr(async_llm, "IDLE_RELEASE_S", 0.5)
    llm = LLM(model=tiny_model_dir, engine=CONFIG)
    released: list[float] = []
    llm.engine.release_idle_memory = lambda: released.append(time.monotonic())  # type: ignore[method-assign]

    async def main() -> tuple[float, float]:
        async with AsyncLLM.from_llm(llm) as allm:
            await asyncio.sleep(0.8)  # no work yet: nothing to give back
            assert released == []
            for _ in range(3):  # back to back, each well inside the pause
                await allm.generate("x", SamplingParams(max_tokens=2))
            done = time.monotonic()
            await asyncio.sleep(1.5)
            return done, time.monotonic()

    done, end = _run(main())
    assert len(released) == 1 and done + 0.4 < released[0] < end


def test_failing_step_fails_every_stream(tiny_model_dir: Path) -> None:
    llm = LLM(model=tiny_model_dir, engine=CONFIG)
    step, calls = llm.engine.step, []

    def failing_step():  # noqa: ANN202
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return step()

    llm.engine.step = failing_step  # type: ignore[method-assign]
    allm = AsyncLLM.from_llm(llm)

    async def main() -> list[BaseException | list]:
        streams = [allm.add_request(p, SamplingParams(max_tokens=50, ignore_eos=True)) for p in WORDS[:3]]
        return await asyncio.gather(*(_collect(s) for s in streams), return_exceptions=True)

    results = _run(main())
    for r in results:
        assert isinstance(r, EngineStoppedError)
        assert isinstance(r.__cause__, RuntimeError) and str(r.__cause__) == "boom"

    async def after() -> None:
        with pytest.raises(EngineStoppedError, match="boom"):
            allm.add_request("again")
        with pytest.raises(EngineStoppedError):
            await allm.generate("again")

    _run(after())
    allm.shutdown()
    assert allm.failure is not None and str(allm.failure) == "boom" and allm.stopped
    assert allm.wait_stopped(timeout=5)


class _BrokenDecoder:
    def add(self, token_id: int) -> str:
        raise RuntimeError("decoder broke")

    def flush(self) -> str:
        return ""


def test_one_failing_request_fails_alone_and_the_engine_goes_on(tiny_model_dir: Path) -> None:
    """A request whose detokenizing raises ends with `RequestFailedError`; the streams beside it
    finish exactly as alone, and the engine serves new requests."""
    llm = LLM(model=tiny_model_dir, engine=CONFIG)
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    expected = [o.token_ids for o in llm.generate(WORDS[:3], params)]
    make_decoder, made = llm.tokenizer.incremental_decoder, []

    def second_breaks(**kwargs: Any) -> Any:  # the engine adds requests in order: the 2nd breaks
        made.append(1)
        return _BrokenDecoder() if len(made) == 2 else make_decoder(**kwargs)

    llm.tokenizer.incremental_decoder = second_breaks  # type: ignore[method-assign]
    allm = AsyncLLM.from_llm(llm)

    async def main() -> list[Any]:
        streams = [allm.add_request(p, params) for p in WORDS[:3]]
        return await asyncio.gather(*(_collect(s) for s in streams), return_exceptions=True)

    first, failed, third = _run(main())
    assert isinstance(failed, RequestFailedError) and "decoder broke" in str(failed)
    assert [t for d in first for t in d.token_ids] == expected[0]
    assert [t for d in third for t in d.token_ids] == expected[2]
    assert allm.failure is None and not allm.stopped
    llm.tokenizer.incremental_decoder = make_decoder  # type: ignore[method-assign]
    again = _run(allm.generate(WORDS[1], params))
    assert again.token_ids == expected[1]
    allm.check_cache()
    assert allm.metrics().kv_blocks_used == 0 and allm.metrics().state_slots_used == 0
    allm.shutdown()


def test_thousands_of_streams_whose_client_left_end_at_once(allm: AsyncLLM, ref: LLM) -> None:
    """3,000 streams queued at once (most wait: 24 run), their consumers cancelled together as a
    server does when the client goes away, some before the engine has even taken their request:
    every one is aborted, the engine ends idle with its cache exact, and serves the next request
    as before."""
    params = SamplingParams(max_tokens=50, temperature=0, ignore_eos=True)

    async def main() -> None:
        streams = [
            allm.add_request(WORDS[i % len(WORDS)], params, request_id=f"gone-{i}") for i in range(3000)
        ]

        async def consume(stream) -> None:  # noqa: ANN001 - an async iterator
            async for _ in stream:
                pass

        tasks = [asyncio.create_task(consume(s)) for s in streams]
        await asyncio.sleep(0)  # the consumers start waiting for their first item
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        while allm.metrics().waiting or allm.metrics().running:  # _run's deadline bounds this
            await asyncio.sleep(0.01)

    _run(main())
    allm.check_cache()
    m = allm.metrics()
    assert (m.running, m.waiting, m.state_slots_used) == (0, 0, m.snapshots)
    assert not any(rid.startswith("gone-") for rid in allm.engine.requests)
    out = _run(allm.generate(WORDS[0], SamplingParams(max_tokens=8, temperature=0)))
    assert out.token_ids == ref.generate([WORDS[0]], SamplingParams(max_tokens=8, temperature=0))[0].token_ids
