"""The teacher: any `ChatModel` (the in-process runtime or an OpenAI-compatible server).

Questions are asked in JSON mode with a schema (`ChatModel.chat_json`). Answers on a remote
teacher are free text, checked afterwards. On the in-process runtime both are decoded in batches
straight through its `LLM`, and an answer can be constrained by a regex whose quote spans are
sentences of the shown documents (`quotes.cot_regex`), so its quotes are verbatim by construction.

Why not through `ChatModel`: its options carry JSON mode, a JSON schema and tools, but no regex or
grammar, and `LocalChatModel` runs one request at a time. What would let this go through the
interface: a `ChatOptions.regex: str | None` (and `grammar: str | None` for Lark) mapped in
`ChatRequest.make` to `StructuredOutput(regex=...)` locally and, for servers, to
`response_format={"type": "regex", "regex": ...}` on ours and `extra_body={"structured_outputs":
{"regex": ...}}` on vLLM; and a `chat_many` that batches on the local engine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jamba_runtime.errors import JambaStackError
from jamba_stack.app.chat_format import ChatInputs
from jamba_stack.app.client import ChatModel, LocalChatModel
from jamba_stack.retrieval.raft.quotes import closing_regex


@dataclass(frozen=True)
class AnswerRequest:
    """One chain-of-thought answer to generate: the conversation, an optional regex constraint
    (used only on the in-process runtime) and a seed."""

    messages: list[dict[str, str]]
    regex: str | None
    seed: int
    quotable: tuple[str, ...] = ()
    min_quotes: int = 1


class Teacher:
    """Generates questions and answers with `model`. `grammar`: constrain answers with their regex
    when the model runs in-process (ignored for a remote model, which cannot take one)."""

    def __init__(
        self, model: ChatModel, *, grammar: bool = True, temperature: float = 0.7, name: str = ""
    ) -> None:
        self.model = model
        self.local = isinstance(model, LocalChatModel)
        self.grammar = grammar and self.local
        self.temperature = temperature
        self.name = name or type(model).__name__

    def token_len(self, text: str) -> int | None:
        """Tokens of `text` for an in-process teacher (None for a remote one)."""
        if not self.local:
            return None
        return len(self.model.llm.tokenizer.encode(text, add_special_tokens=False))  # type: ignore[attr-defined]

    def questions(
        self,
        messages: Sequence[list[dict[str, str]]],
        schema: Mapping[str, Any],
        seeds: Sequence[int],
        max_tokens: int,
    ) -> list[list[dict[str, str]] | None]:
        """The `questions` list of each JSON reply, or None where the reply was cut off, refused, or
        not what the schema says (a server that ignores schemas)."""
        if self.local:
            texts, _ = self._local(
                [
                    (
                        m,
                        {"type": "json_schema", "json_schema": {"name": "q", "schema": dict(schema)}},
                        None,
                        s,
                    )
                    for m, s in zip(messages, seeds, strict=True)
                ],
                max_tokens,
            )
            out: list[list[dict[str, str]] | None] = []
            for t in texts:
                try:
                    out.append(_qa_list(json.loads(t or "")))
                except json.JSONDecodeError:
                    out.append(None)
            return out
        res = []
        for m, s in zip(messages, seeds, strict=True):
            try:
                obj = self.model.chat_json(
                    m, json_schema=schema, max_tokens=max_tokens, temperature=self.temperature, seed=s
                )
                res.append(_qa_list(obj))
            except JambaStackError:  # cut off (InvalidRequestError) or refused by the server
                res.append(None)
        return res

    def answers(self, requests: Sequence[AnswerRequest], max_tokens: int) -> list[str | None]:
        """The teacher's answer text per request (None when the model refused the request)."""
        if self.local:
            items = [(r.messages, None, r.regex if self.grammar else None, r.seed) for r in requests]
            texts, outs = self._local(items, max_tokens)
            if self.grammar:
                self._finish(requests, texts, outs)
            return texts
        out: list[str | None] = []
        for r in requests:
            try:
                out.append(
                    self.model.chat(
                        r.messages, max_tokens=max_tokens, temperature=self.temperature, seed=r.seed
                    ).content
                )
            except JambaStackError:
                out.append(None)
        return out

    def _local(
        self,
        items: Sequence[tuple[list[dict[str, str]], dict | None, str | None, int]],
        max_tokens: int,
        prompt_ids: Sequence[list[int] | None] | None = None,
    ) -> tuple[list[str | None], list[Any]]:
        """One batch through the in-process engine: prompts rendered as `LocalChatModel` does (or
        given as `prompt_ids`), each with its own structured-output spec and seed. Returns the
        texts and the `RequestOutput`s (None for an item whose prompt does not fit the context)."""
        from jamba_runtime.sampling_params import SamplingParams
        from jamba_runtime.structured import StructuredOutput

        assert isinstance(self.model, LocalChatModel)
        llm = self.model.llm
        prompts, params, slots = [], [], []
        for k, (messages, response_format, regex, seed) in enumerate(items):
            inputs = ChatInputs(messages=messages, response_format=response_format)
            given = prompt_ids[k] if prompt_ids is not None else None
            ids = given if given is not None else inputs.render(llm.tokenizer)
            if len(ids) >= llm.max_model_len:  # too long for the context: that item fails, not the batch
                continue
            spec = StructuredOutput(regex=regex) if regex is not None else inputs.structured()
            prompts.append(ids)
            slots.append(k)
            params.append(
                SamplingParams(
                    max_tokens=min(max_tokens, llm.max_model_len - len(ids)),
                    temperature=self.temperature,
                    seed=seed,
                    **({"structured": spec} if spec is not None else {}),
                )
            )
        texts: list[str | None] = [None] * len(items)
        outs: list[Any] = [None] * len(items)
        if prompts:
            with self.model._lock:  # the engine is shared with chat() calls on the same model
                results = llm.generate(prompts, params)
            for k, o in zip(slots, results, strict=True):
                texts[k], outs[k] = o.text, o
        return texts, outs

    def _finish(self, requests: Sequence[AnswerRequest], texts: list[str | None], outs: list[Any]) -> None:
        """Answers cut off by max_tokens before `<ANSWER>:` are continued once under a closing
        grammar (`quotes.closing_regex`): the quote under way ends as one of the shown sentences,
        then a short final answer. The continuation is the model's own, from where it stopped."""
        todo = []
        for k, (r, text, o) in enumerate(zip(requests, texts, outs, strict=True)):
            if text is None or o is None or o.finish_reason != "length" or r.regex is None:
                continue
            rx = closing_regex(text, r.quotable, min_quotes=r.min_quotes)
            if rx is not None:
                todo.append((k, rx, list(o.prompt_token_ids) + list(o.token_ids)))
        if not todo:
            return
        longest = max((self.token_len(s) or 0 for r in requests for s in r.quotable), default=0)
        items = [(requests[k].messages, None, rx, requests[k].seed + 1) for k, rx, _ in todo]
        more, _ = self._local(items, longest + 48, prompt_ids=[ids for _, _, ids in todo])
        for (k, _, _), tail in zip(todo, more, strict=True):
            full = (texts[k] or "") + (tail or "")
            if tail is not None and re.fullmatch(requests[k].regex or "", full, re.DOTALL):
                texts[k] = full


def _qa_list(obj: Any) -> list[dict[str, str]] | None:
    items = obj.get("questions") if isinstance(obj, dict) else None
    if not isinstance(items, list):
        return None
    out = []
    for it in items:
        if isinstance(it, dict) and isinstance(it.get("question"), str):
            out.append({"question": it["question"].strip(), "answer": str(it.get("answer") or "").strip()})
    return out
