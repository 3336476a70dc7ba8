"""Many concurrent streams on one engine: `AsyncLLM` steps an `LLMEngine` in one background thread
and hands each request's outputs to asyncio as they are made.

Threading: `LLMEngine` is not thread-safe, so exactly one thread (the engine loop, started on the
first request) ever touches it. Callers enqueue commands (add, abort, check) under a condition
variable; between steps the loop runs them, steps while anything is unfinished, and otherwise sleeps
on the condition. Each request's deltas go to an `asyncio.Queue` owned by the event loop that added
it, through `loop.call_soon_threadsafe` (one call per event loop per step, not per token).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from jamba_runtime.engine.config import EngineArgs
from jamba_runtime.engine.engine import LLMEngine
from jamba_runtime.engine.metrics import EngineMetrics
from jamba_runtime.engine.outputs import GenerateOutput, RequestOutputDelta, StepOutput
from jamba_runtime.engine.sampling_params import SamplingParams
from jamba_runtime.engine.streams import Outbox, RequestStream
from jamba_runtime.errors import EngineStoppedError, InvalidRequestError, RequestNotFoundError
from jamba_runtime.llm import LLM, Prompt
from jamba_runtime.tokenizer.tokenizer import Tokenizer

T = TypeVar("T")
# Seconds the engine stays idle before it gives its cached GPU memory back: long enough that a
# closed loop of requests (one finishing, the next arriving) never pays for new allocations.
IDLE_RELEASE_S = 2.0
logger = logging.getLogger(__name__)


_Command = tuple[Callable[[], Any], "Future[Any] | None"]


class AsyncLLM:
    """A Jamba model served to many concurrent asyncio consumers, each with its own stream.

    Args: as `LLM`, which loads the model: `model` and the fields of `EngineArgs` as keywords;
    or `AsyncLLM.from_args(args)`; or wrap a loaded `LLM` with `AsyncLLM.from_llm(llm)`.

    Requests run as one continuous batch in a background thread. A stream that its consumer stops
    reading (breaks out, or its task is cancelled: a client that went away) is aborted, freeing its
    cache. Wrap `add_request` in `contextlib.aclosing` to make that happen at once on `break`
    rather than when the stream is garbage-collected. One `AsyncLLM` may serve several event
    loops (each stream belongs to the loop that added it); `metrics()` never blocks.

    Example:
        >>> async def main() -> None:
        ...     async with AsyncLLM(model="models/tiny") as llm:
        ...         params = SamplingParams(max_tokens=32, temperature=0)
        ...         async for delta in llm.add_request("Once upon", params, request_id="a"):
        ...             print(delta.text, end="", flush=True)
        ...         out = await llm.generate("Hello", params)
        ...         print(out.text, out.finish_reason, out.usage)
        >>> asyncio.run(main())
    """

    def __init__(self, model: str | Path, **kwargs: Any) -> None:
        self._setup(LLM(model, **kwargs))
        self._owns_llm = True  # shutdown also stops a tensor-parallel LLM's other ranks

    @classmethod
    def from_args(cls, args: EngineArgs) -> AsyncLLM:
        """Load what `args` says (see `EngineArgs`) and serve it."""
        obj = cls.from_llm(LLM.from_args(args))
        obj._owns_llm = True
        return obj

    @classmethod
    def from_llm(cls, llm: LLM) -> AsyncLLM:
        """Serve an already loaded `LLM`. They share one engine: do not use `llm` itself until this
        `AsyncLLM` is closed."""
        obj = cls.__new__(cls)
        obj._setup(llm)
        return obj

    def _setup(self, llm: LLM) -> None:
        self.llm = llm
        self._owns_llm = False
        self.engine: LLMEngine = llm.engine
        self.tokenizer: Tokenizer = llm.tokenizer
        # Guards _commands, _streams, _thread, _closing, _dead. Reentrant: a stream's GC finalizer
        # may run on any thread, the engine loop's included, while it holds the lock.
        self._cond = threading.Condition(threading.RLock())
        self._commands: deque[_Command] = deque()
        self._batch: deque[_Command] = deque()  # the commands the loop is running now
        self._results: list[tuple[Future, Any, BaseException | None]] = []  # theirs, not yet given
        self._streams: dict[str, RequestStream] = {}  # added and not finished
        self._thread: threading.Thread | None = None
        self._closing = False
        self._dead: BaseException | None = None
        self._stopped = threading.Event()  # set once the engine loop has ended (closed or failed)
        self._outbox = Outbox()  # loop thread only: handed out at the end of each round
        self._metrics = self.engine.metrics()

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    # ---- public API ------------------------------------------------------------------------------
    def add_request(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        priority: int = 0,
        prefix_snapshot: str | None = None,
        save_snapshot: str | None = None,
    ) -> AsyncGenerator[RequestOutputDelta, None]:
        """Queue a request and return the stream of its outputs (call from a coroutine).

        The request is queued now, whether or not the stream is read (an unread one is aborted
        when garbage-collected, or when its event loop closes). Each item is one step's
        delta; the last has `finished=True`, its `finish_reason` and `usage`. `prompt`: text or
        token ids. `priority`: lower runs first. `prefix_snapshot` / `save_snapshot`: as
        `LLMEngine.add_request`.

        Raises at the call, before iteration: `InvalidRequestError` (empty prompt, ids outside the
        vocab, an id already running, an unknown snapshot, params not a `SamplingParams`),
        `ContextLengthError` (prompt reaches `max_model_len`), `EngineStoppedError` (closed or
        failed), `RuntimeError` (no running event loop). While iterating: `EngineStoppedError` if
        the engine loop fails, `RequestFailedError` if this request alone failed in the engine
        (the others go on), or `InvalidRequestError` if the engine refuses the request (a
        snapshot dropped between the call and the engine taking the request).
        """
        stream = self._add(prompt, params, request_id, priority, prefix_snapshot, save_snapshot)
        iterator = self._iterate(stream)
        # An unread stream never runs its `finally`: abort when it is garbage-collected instead.
        stream.finalizer = weakref.finalize(iterator, self._abort_soon, stream)
        stream.finalizer.atexit = False
        return iterator

    async def generate(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        priority: int = 0,
        prefix_snapshot: str | None = None,
        save_snapshot: str | None = None,
    ) -> GenerateOutput:
        """Run one request to the end and return all of it; arguments and errors as
        `add_request`. Cancelling the awaiting task aborts the request."""
        stream = self._add(prompt, params, request_id, priority, prefix_snapshot, save_snapshot)
        text: list[str] = []
        token_ids: list[int] = []
        logprobs: list[dict] = []
        last: RequestOutputDelta | None = None
        async with contextlib.aclosing(self._iterate(stream)) as deltas:
            async for last in deltas:
                text.append(last.text)
                token_ids.extend(last.token_ids)
                logprobs.extend(last.logprobs or ())
        assert last is not None and last.finished, "a stream ends with its finished item"
        return GenerateOutput(
            request_id=stream.request_id,
            prompt_token_ids=stream.prompt_token_ids,
            text="".join(text),
            token_ids=token_ids,
            finish_reason=last.finish_reason,
            usage=last.usage,
            logprobs=logprobs if (params is not None and params.logprobs is not None) else None,
        )

    async def abort(self, request_id: str) -> None:
        """Stop a request: when this returns its blocks and state slot are free, and its stream
        ends with a `finish_reason="abort"` item. Raises `RequestNotFoundError` for an id that is
        not running (unknown, finished, or aborted already)."""
        stream = self._streams.get(request_id)
        if stream is None or stream.finished:
            raise _not_found(request_id)

        def abort() -> None:
            if self._streams.get(request_id) is not stream:
                raise _not_found(request_id)  # it finished while this command waited
            self.engine.abort(request_id)
            self._end_aborted(stream)

        await asyncio.wrap_future(self._submit(abort))

    @property
    def failure(self) -> BaseException | None:
        """The exception that stopped the engine loop, or None while it is healthy (or was closed
        normally). A server reports it from its health check and exits."""
        return self._dead

    @property
    def stopped(self) -> bool:
        """True once closed or failed: no new request will run."""
        return self._closing or self._dead is not None

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Block until the engine loop has ended (closed or failed) or `timeout` passes; True if
        it ended. A loop that never started (no request yet) ends at `shutdown`."""
        return self._stopped.wait(timeout)

    def metrics(self) -> EngineMetrics:
        """The engine's metrics as of its last step or command (a copy; never blocks). Taken
        before that round's outputs and command results are handed out, so a consumer that saw
        its request end, or an `abort` that returned, sees it counted."""
        return dataclasses.replace(self._metrics)

    def check_cache(self) -> None:
        """Run `LLMEngine.check_cache` on the engine thread (after every command queued before
        it, GC-triggered aborts included); raises its `AssertionError`. Blocks for up to a step."""
        self._on_engine(self.engine.check_cache)

    def shutdown(self) -> None:
        """Stop the engine loop and wait for it; requests still running end with
        `finish_reason="abort"` and their cache is freed. Idempotent. Blocks for up to a step."""
        with self._cond:
            self._closing = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._stopped.set()
        if self._owns_llm:
            self.llm.close()

    async def aclose(self) -> None:
        """`shutdown` without blocking the event loop."""
        await asyncio.to_thread(self.shutdown)

    async def __aenter__(self) -> AsyncLLM:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- caller side -----------------------------------------------------------------------------
    def _add(
        self,
        prompt: Prompt,
        params: SamplingParams | None,
        request_id: str | None,
        priority: int,
        prefix_snapshot: str | None,
        save_snapshot: str | None,
    ) -> RequestStream:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "AsyncLLM.add_request needs a running event loop: call it from a coroutine "
                "(or use LLM for synchronous code)"
            ) from None
        if params is None:
            params = SamplingParams()
        elif not isinstance(params, SamplingParams):
            raise InvalidRequestError(f"params={params!r} is invalid: pass a SamplingParams")
        ids = self.engine.prompt_ids(prompt)  # a bad prompt fails here, at the call
        # Best effort, for an error at the call: the engine thread may still drop the snapshot
        # before it takes the request (then the stream raises). A dict lookup is atomic.
        if prefix_snapshot is not None and prefix_snapshot not in self.engine.snapshots:
            raise InvalidRequestError(
                f"no prefix snapshot named {prefix_snapshot!r}: save one first (save_snapshot=...)"
            )
        rid = request_id if request_id is not None else f"req-{uuid.uuid4().hex}"
        stream = RequestStream(rid, ids, loop, asyncio.Queue())
        asked = time.monotonic()  # its queue time includes the wait for the engine thread

        def add() -> None:
            if stream.cancelled:
                # Its consumer left before the engine took it: it never enters the engine.
                self._end_aborted(stream)
                return
            try:
                self.engine.add_request(
                    ids,
                    params,
                    request_id=rid,
                    priority=priority,
                    prefix_snapshot=prefix_snapshot,
                    save_snapshot=save_snapshot,
                    arrival_time=asked,
                )
            except Exception as e:  # refused after all: the stream raises it
                self._forget(stream)
                self._outbox.put(stream, e)

        with self._cond:
            self._raise_if_stopped()
            if rid in self._streams:
                raise InvalidRequestError(f"request id {rid!r} is already running: use a new id")
            self._streams[rid] = stream
            self._enqueue((add, None))
        return stream

    async def _iterate(self, stream: RequestStream) -> AsyncGenerator[RequestOutputDelta, None]:
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    return
        finally:
            # Reached on break (at aclose / GC), cancellation, or the consumer's own error.
            if stream.finalizer is not None:
                stream.finalizer.detach()
            self._abort_soon(stream)

    def _abort_soon(self, stream: RequestStream) -> None:
        """Abort `stream`'s request on the engine thread without waiting; nothing if it ended."""
        if stream.finished:
            return
        stream.cancelled = True  # an add still queued then never reaches the engine

        def abort() -> None:
            if self._streams.get(stream.request_id) is stream:
                with contextlib.suppress(RequestNotFoundError):
                    self.engine.abort(stream.request_id)
                self._end_aborted(stream)

        with self._cond:
            if self._closing or self._dead is not None:
                return  # the loop aborts (or failed) every request itself
            self._enqueue((abort, None))

    def _submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._cond:
            self._raise_if_stopped()
            self._enqueue((fn, future))
        return future

    def _on_engine(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the engine thread and wait; or here, when no engine thread runs."""
        while True:
            with self._cond:
                thread = self._thread
                if thread is None or not thread.is_alive():
                    return fn()  # holding the lock: no thread can start meanwhile
                if not self._closing and self._dead is None:
                    future: Future[T] = Future()
                    self._enqueue((fn, future))
                    break
            thread.join()  # it is stopping: wait, then run here
        return future.result()

    def _enqueue(self, command: _Command) -> None:
        """Queue a command and wake the loop, starting it if need be (holding `_cond`)."""
        self._commands.append(command)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="jamba-engine-loop", daemon=True)
            self._thread.start()
        self._cond.notify()

    def _raise_if_stopped(self) -> None:
        if self._dead is not None:
            raise self._stopped_error()
        if self._closing:
            raise EngineStoppedError("this AsyncLLM is closed: make a new one")

    def _stopped_error(self) -> EngineStoppedError:
        err = EngineStoppedError(
            f"the engine loop stopped after an error ({type(self._dead).__name__}: {self._dead}): "
            "make a new AsyncLLM"
        )
        err.__cause__ = self._dead
        return err

    # ---- engine thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        busy = False
        release_pending = False  # steps ran since the engine last gave its idle memory back
        try:
            while True:
                with self._cond:
                    while not (self._commands or self._closing or busy):
                        if not release_pending:
                            self._cond.wait()
                        elif not self._cond.wait(IDLE_RELEASE_S):
                            break
                    self._batch, self._commands = self._commands, deque()
                    closing = self._closing
                if release_pending and not (self._batch or closing or busy):
                    self.engine.release_idle_memory()
                    release_pending = False
                    continue
                if self._batch:
                    self._run_commands()
                if closing:
                    for stream in list(self._streams.values()):
                        with contextlib.suppress(RequestNotFoundError):
                            self.engine.abort(stream.request_id)
                        self._end_aborted(stream)
                    self._hand_out()
                    return
                if self.engine.has_unfinished():
                    for out in self.engine.step():
                        self._route(out)
                    self._hand_out()
                    release_pending = True
                busy = self.engine.has_unfinished()
        except BaseException as exc:
            self._fail(exc)

    def _run_commands(self) -> None:
        # Results wait until the metrics are published: whoever waits on one then sees its effect.
        while self._batch:
            fn, future = self._batch.popleft()
            try:
                result = fn()
            except Exception as e:
                if future is None:
                    raise  # fire-and-forget commands handle their own errors: this is a bug
                self._results.append((future, None, e))
            else:
                if future is not None:
                    self._results.append((future, result, None))
        self._hand_out()
        results, self._results = self._results, []
        for future, result, exc in results:
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def _route(self, out: StepOutput) -> None:
        stream = self._streams.get(out.request_id)
        if stream is None:
            return  # added to the engine directly, not through this AsyncLLM
        item = stream.item(out)
        if isinstance(item, BaseException) or item.finished:
            self._forget(stream)
        self._outbox.put(stream, item)

    def _end_aborted(self, stream: RequestStream) -> None:
        self._forget(stream)
        if not stream.cancelled:  # a consumer that left reads nothing more
            self._outbox.put(stream, stream.aborted())

    def _forget(self, stream: RequestStream) -> None:
        with self._cond:
            if self._streams.get(stream.request_id) is stream:
                del self._streams[stream.request_id]
        stream.finished = True

    def _hand_out(self) -> None:
        """Publish metrics, then give each event loop its items in one call."""
        self._metrics = self.engine.metrics()
        closed = self._outbox.hand_out()
        if not closed:
            return
        # A closed event loop: nobody can read its streams, so their requests end now.
        with self._cond:
            orphans = [s for s in self._streams.values() if s.loop in closed]
        for stream in orphans:
            self.engine.abort(stream.request_id)
            self._forget(stream)
        self._metrics = self.engine.metrics()

    def _fail(self, exc: BaseException) -> None:
        """The loop is dying: fail every stream and every waiting command, so nothing hangs."""
        logger.critical("the engine loop stopped: %s: %s", type(exc).__name__, exc, exc_info=exc)
        with self._cond:
            self._dead = exc
            pending = [future for _, future in [*self._batch, *self._commands] if future is not None]
            pending += [future for future, _, _ in self._results]
            self._batch, self._commands, self._results = deque(), deque(), []
            streams = list(self._streams.values())
            self._streams.clear()
        for stream in streams:
            stream.finished = True
            self._outbox.put(stream, self._stopped_error())
        self._outbox.hand_out()  # a closed event loop has no one to tell
        for future in pending:
            future.set_exception(self._stopped_error())
        self._stopped.set()


def _not_found(request_id: str) -> RequestNotFoundError:
    return RequestNotFoundError(
        f"no running request with id {request_id!r}: it finished, was aborted, or was never added"
    )
