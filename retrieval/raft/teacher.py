"""The teacher: any `ChatModel` (the in-process runtime or an OpenAI-compatible server).

Questions are asked in JSON mode with a schema, answers as free text constrained by a regex whose
quote spans are sentences of the shown documents (`quotes.cot_regex`), so their quotes are verbatim
by construction. Both go through `ChatModel.chat_many`: one batch in the in-process engine, or
concurrent requests to a server, which constrains them through its structured-output fields
(`jamba-stack serve` and vLLM; a server that cannot is answered with unconstrained text, which is
checked afterwards).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jamba_runtime.errors import JambaStackError
from jamba_stack.chat import ChatModel, ChatOptions, ChatResponse
from jamba_stack.retrieval.raft.quotes import closing_regex


@dataclass(frozen=True)
class AnswerRequest:
    """One chain-of-thought answer to generate: the conversation, an optional regex constraint
    and a seed."""

    messages: list[dict[str, str]]
    regex: str | None
    seed: int
    quotable: tuple[str, ...] = ()
    min_quotes: int = 1


class Teacher:
    """Generates questions and answers with `model`. `grammar`: constrain answers with their
    regex (False: free text, checked afterwards)."""

    def __init__(
        self, model: ChatModel, *, grammar: bool = True, temperature: float = 0.7, name: str = ""
    ) -> None:
        self.model = model
        self.grammar = grammar
        self.temperature = temperature
        self.name = name or model.name

    def token_len(self, text: str) -> int:
        """Tokens of `text` in the teacher's tokenizer (an estimate for a server without
        `/tokenize`)."""
        return self.model.count_tokens(text)

    def questions(
        self,
        messages: Sequence[list[dict[str, str]]],
        schema: Mapping[str, Any],
        seeds: Sequence[int],
        max_tokens: int,
    ) -> list[list[dict[str, str]] | None]:
        """The `questions` list of each JSON reply, or None where the reply was cut off, refused, or
        not what the schema says (a server that ignores schemas)."""
        options: ChatOptions = {
            "json_schema": dict(schema),
            "max_tokens": max_tokens,
            "temperature": self.temperature,
        }
        replies = self.model.chat_many(
            [(m, {**options, "seed": s}) for m, s in zip(messages, seeds, strict=True)]
        )
        out: list[list[dict[str, str]] | None] = []
        for reply in replies:
            try:
                out.append(_qa_list(reply.json()) if isinstance(reply, ChatResponse) else None)
            except JambaStackError:  # cut off: not whole JSON
                out.append(None)
        return out

    def answers(self, requests: Sequence[AnswerRequest], max_tokens: int) -> list[str | None]:
        """The teacher's answer text per request (None when the model refused the request)."""
        replies = self.model.chat_many(
            [(r.messages, self._options(r.regex, r.seed, max_tokens)) for r in requests]
        )
        texts = [reply.content if isinstance(reply, ChatResponse) else None for reply in replies]
        if self.grammar:
            self._finish(requests, texts, replies)
        return texts

    def _options(self, regex: str | None, seed: int, max_tokens: int) -> ChatOptions:
        options: ChatOptions = {"max_tokens": max_tokens, "temperature": self.temperature, "seed": seed}
        if regex is not None and self.grammar:
            options["regex"] = regex
        return options

    def _finish(
        self,
        requests: Sequence[AnswerRequest],
        texts: list[str | None],
        replies: Sequence[ChatResponse | JambaStackError],
    ) -> None:
        """Answers cut off by max_tokens before `<ANSWER>:` are continued once under a closing
        grammar (`quotes.closing_regex`): the quote under way ends as one of the shown sentences,
        then a short final answer. The continuation is the model's own, from where it stopped
        (`continue_final_message`)."""
        todo = []
        for k, (r, text, reply) in enumerate(zip(requests, texts, replies, strict=True)):
            if (
                not text
                or not isinstance(reply, ChatResponse)
                or reply.finish_reason != "length"
                or r.regex is None
            ):
                continue
            rx = closing_regex(text, r.quotable, min_quotes=r.min_quotes)
            if rx is not None:
                todo.append((k, rx))
        if not todo:
            return
        longest = max((self.token_len(s) for r in requests for s in r.quotable), default=0)
        more = self.model.chat_many(
            [
                (
                    [*requests[k].messages, {"role": "assistant", "content": texts[k] or ""}],
                    {**self._options(rx, requests[k].seed + 1, longest + 48), "continue_final_message": True},
                )
                for k, rx in todo
            ]
        )
        for (k, _), tail in zip(todo, more, strict=True):
            if not isinstance(tail, ChatResponse):
                continue
            full = (texts[k] or "") + (tail.content or "")
            if re.fullmatch(requests[k].regex or "", full, re.DOTALL):
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
