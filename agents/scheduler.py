"""Many agents on one runtime: `AgentScheduler` runs N agents concurrently so that their model
turns batch in the engine (continuous batching through `AsyncLLM`).

    >>> results = AgentScheduler(max_concurrent_calls=32).run([(agent_a, "goal 1"), (agent_b, "goal 2")])

For the duration of the run, each distinct model is entered once as `model.concurrent()`: an
in-process model lends its engine to an asyncio adapter (so every agent of a runtime shares one
batch); a server's model is used as it is (a server batches by itself).

Fairness is FIFO: at most `max_concurrent_calls` model turns are in flight; a turn that finds them
all taken waits in one queue and is admitted in arrival order. An agent asks for its next turn only
after its tools ran, so under load agents take turns round-robin-like and none is starved. Agents
themselves are admitted FIFO too, at most `max_running_agents` at a time. Per-agent limits (steps,
tokens, wall time, tool calls) are each agent's own `Policy`; a wall-time limit counts from the
agent's start, queueing included.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from jamba_stack.agents.agent import Agent
from jamba_stack.agents.errors import AgentConfigError
from jamba_stack.agents.run import RunResult
from jamba_stack.chat import ChatModel


@dataclass
class FifoGate:
    """At most `capacity` holders at once; waiters are admitted in arrival order.

    Use: `async with gate(name) as queued_seconds: ...`. `admitted` lists holders' names in the
    order they got in; `max_waiting` is the longest the queue got."""

    capacity: int
    admitted: list[str] = field(default_factory=list)
    max_waiting: int = 0
    max_in_flight: int = 0
    _in_flight: int = 0
    _waiters: deque[asyncio.Future[None]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if not isinstance(self.capacity, int) or self.capacity < 1:
            raise AgentConfigError(f"capacity={self.capacity!r} is invalid: use an integer >= 1")

    @contextlib.asynccontextmanager
    async def __call__(self, name: str) -> AsyncIterator[float]:
        t0 = time.monotonic()
        if self._in_flight >= self.capacity or self._waiters:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            self.max_waiting = max(self.max_waiting, len(self._waiters))
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release()  # the slot was handed over as we were cancelled: pass it on
                else:
                    self._waiters.remove(waiter)
                raise
        else:
            self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        self.admitted.append(name)
        try:
            yield time.monotonic() - t0
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to it: `_in_flight` stays
                return
        self._in_flight -= 1


class AgentScheduler:
    """Runs many agents concurrently on shared runtimes (see the module docstring).

    Args:
        max_concurrent_calls: model turns in flight at once (default: the engine's
            `max_num_seqs` of the first in-process model, else 64).
        max_running_agents: agents running at once (default: all).
        reuse_prefix: start each turn from the runtime snapshot of the agent's previous prompt
            (see `jamba_stack.chat.local`) instead of prefilling the whole conversation again.

    After a run, `call_gate.admitted` is the order turns were admitted in and `prefix_requests`
    how many turns started from a snapshot.
    """

    def __init__(
        self,
        max_concurrent_calls: int | None = None,
        max_running_agents: int | None = None,
        reuse_prefix: bool = True,
    ) -> None:
        self.max_concurrent_calls = max_concurrent_calls
        self.max_running_agents = max_running_agents
        self.reuse_prefix = reuse_prefix
        self.prefix_requests = 0
        self.call_gate: FifoGate | None = None
        self.agent_gate: FifoGate | None = None

    def run(self, jobs: Sequence[tuple[Agent, str]]) -> list[RunResult]:
        """`arun` from synchronous code."""
        return asyncio.run(self.arun(jobs))

    async def arun(self, jobs: Sequence[tuple[Agent, str]]) -> list[RunResult]:
        """Run each (agent, goal) to the end, concurrently; results in the order of `jobs`.

        An agent whose model raises does not stop the others: every agent finishes, then the first
        such error is raised."""
        jobs = list(jobs)
        results: list[RunResult | BaseException]
        with contextlib.ExitStack() as stack:
            concurrent: dict[int, ChatModel] = {}
            for agent, _ in jobs:
                model = agent.model
                if id(model) not in concurrent:
                    concurrent[id(model)] = stack.enter_context(model.concurrent(self.reuse_prefix))
            models = [concurrent[id(agent.model)] for agent, _ in jobs]
            capacity = self.max_concurrent_calls or next(
                (m.max_concurrency for m in concurrent.values() if m.max_concurrency), 64
            )
            self.call_gate = FifoGate(capacity)
            self.agent_gate = FifoGate(self.max_running_agents or max(1, len(jobs)))
            try:
                results = await asyncio.gather(
                    *(self._one(agent, goal, m) for (agent, goal), m in zip(jobs, models, strict=True)),
                    return_exceptions=True,
                )
            finally:
                self.prefix_requests += sum(m.prefix_requests for m in concurrent.values())
                # Closing an in-process adapter stops its engine loop: off the event loop.
                await asyncio.to_thread(stack.pop_all().close)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return list(results)  # type: ignore[arg-type]

    async def _one(self, agent: Agent, goal: str, model: ChatModel) -> RunResult:
        assert self.agent_gate is not None and self.call_gate is not None
        async with self.agent_gate(agent.name):
            run = agent.start(goal, model)
            run.gate = self.call_gate
            return await run.run()
