"""The public offline API: `LLM(model=...)` with `generate`, `stream` and `chat`."""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import torch

from jamba_runtime.batch import ForwardBatch
from jamba_runtime.cache import HybridCache
from jamba_runtime.errors import ContextLengthError, InvalidRequestError
from jamba_runtime.loader import load_model, resolve_model_path
from jamba_runtime.model import JambaForCausalLM
from jamba_runtime.sampler import sample
from jamba_runtime.sampling_params import SamplingParams
from jamba_runtime.sequence import RequestOutput, Sequence
from jamba_runtime.tokenizer import Tokenizer

Prompt = str | list[int]


class LLM:
    """A Jamba model with its tokenizer, ready to generate.

    Args:
        model: checkpoint directory or hub id. device: "cpu" or "cuda". dtype: "float32",
            "bfloat16" or "float16". max_model_len: context limit in tokens (default: the
            model's `max_position_embeddings`). tokenizer: a directory, when not the model's.

    A request whose prompt plus `max_tokens` would pass `max_model_len` is not refused: it stops
    at the limit with `finish_reason="length"`. A prompt that alone reaches the limit raises
    `ContextLengthError`.

    Example:
        >>> llm = LLM(model="models/tiny")
        >>> out = llm.generate(["Hello"], SamplingParams(max_tokens=16, temperature=0))[0]
        >>> out.text, out.finish_reason
        >>> for delta in llm.stream("Once upon", SamplingParams(max_tokens=32)):
        ...     print(delta, end="")
        >>> llm.chat([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=32)).text
    """

    def __init__(
        self,
        model: str | Path,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        max_model_len: int | None = None,
        tokenizer: str | Path | None = None,
        local_files_only: bool = False,
    ) -> None:
        path = resolve_model_path(model, local_files_only=local_files_only)
        self.model: JambaForCausalLM = load_model(path, device=device, dtype=dtype)
        self.config = self.model.config
        self.tokenizer = Tokenizer.from_dir(tokenizer if tokenizer is not None else path)
        limit = self.config.max_position_embeddings
        if max_model_len is not None and not 0 < max_model_len <= limit:
            raise InvalidRequestError(f"max_model_len={max_model_len} is invalid: it must be in 1..{limit}")
        self.max_model_len = max_model_len or limit
        self.eos_token_ids = frozenset(self.config.eos_token_id) | frozenset(self.tokenizer.eos_token_ids)

    # ---- public API ------------------------------------------------------------------------------
    def generate(
        self,
        prompts: Prompt | Seq[Prompt],
        params: SamplingParams | Seq[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Complete each prompt (text, or token ids); one output per prompt, in order."""
        seqs = self._make_sequences(_as_prompt_list(prompts), params)
        for _ in self._run(seqs):
            pass
        return [s.output() for s in seqs]

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[str]:
        """Yield the completion of one prompt as text deltas, as tokens are generated."""
        seqs = self._make_sequences([prompt], params)
        for _, delta in self._run(seqs):
            if delta:
                yield delta

    def chat(
        self,
        messages: list[dict[str, Any]],
        params: SamplingParams | None = None,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
    ) -> RequestOutput:
        """Answer a conversation rendered with the checkpoint's chat template (tools and documents
        passed to it)."""
        ids = self.chat_prompt_ids(messages, tools=tools, documents=documents)
        return self.generate([ids], params)[0]

    def chat_prompt_ids(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        return self.tokenizer.encode_chat(
            messages, tools=tools, documents=documents, add_generation_prompt=True
        )

    # ---- internals -------------------------------------------------------------------------------
    def _make_sequences(
        self, prompts: list[Prompt], params: SamplingParams | Seq[SamplingParams] | None
    ) -> list[Sequence]:
        if params is None:
            param_list = [SamplingParams()] * len(prompts)
        elif isinstance(params, SamplingParams):
            param_list = [params] * len(prompts)
        else:
            param_list = list(params)
            if len(param_list) != len(prompts):
                raise InvalidRequestError(
                    f"got {len(param_list)} SamplingParams for {len(prompts)} prompts: pass one, or one per prompt"
                )
        seqs = []
        for i, (prompt, p) in enumerate(zip(prompts, param_list, strict=True)):
            ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
            if not ids:
                raise InvalidRequestError(f"prompt {i} is empty: give at least one token of text")
            if any(not 0 <= t < self.config.vocab_size for t in ids):
                raise InvalidRequestError(
                    f"prompt {i} has token ids outside the vocab (0..{self.config.vocab_size - 1})"
                )
            if len(ids) >= self.max_model_len:
                raise ContextLengthError(
                    f"prompt {i} has {len(ids):,} tokens, limit {self.max_model_len:,} including at least one "
                    "new token: shorten it or raise max_model_len"
                )
            gen = None
            if not p.greedy:
                gen = torch.Generator(device=self.model.device)
                gen.manual_seed(p.seed if p.seed is not None else int(torch.randint(0, 2**62, ()).item()))
            seqs.append(
                Sequence(
                    prompt_token_ids=ids,
                    params=p,
                    decoder=self.tokenizer.incremental_decoder(),
                    eos_token_ids=self.eos_token_ids,
                    max_new_tokens=min(p.max_tokens, self.max_model_len - len(ids)),
                    generator=gen,
                )
            )
        return seqs

    def _run(self, seqs: list[Sequence]) -> Iterator[tuple[int, str]]:
        """Prefill every prompt in one packed step, then decode all running sequences together.
        Yields `(sequence index, text delta)` after each token."""
        device = self.model.device
        capacity = max(len(s.prompt_token_ids) + s.max_new_tokens for s in seqs)
        cache = HybridCache(self.config, len(seqs), capacity, dtype=self.model.dtype, device=device)
        active = list(range(len(seqs)))
        query = [list(s.prompt_token_ids) for s in seqs]
        while active:
            batch = ForwardBatch.build(
                [len(query[i]) for i in active],
                [seqs[i].num_tokens - len(query[i]) for i in active],
                slots=active,
                device=device,
            )
            tokens = torch.tensor([t for i in active for t in query[i]], device=device)
            logits = self.model.forward_packed(
                tokens, batch, cache, logits_indices=batch.last_token_indices()
            )
            picked = sample(
                logits,
                [seqs[i].params for i in active],
                [seqs[i].generator for i in active],
                [_seen(seqs[i], device) for i in active],
            )
            for i, token in zip(active, picked, strict=True):
                yield i, seqs[i].append_token(token)
                query[i] = [token]
            active = [i for i in active if not seqs[i].finished]


def _seen(seq: Sequence, device: torch.device) -> torch.Tensor:
    if seq.params.repetition_penalty == 1.0:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.tensor(seq.all_token_ids(), dtype=torch.long, device=device)


def _as_prompt_list(prompts: Prompt | Seq[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]  # one prompt given as token ids
    return prompts
