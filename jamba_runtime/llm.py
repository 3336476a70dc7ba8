"""The public offline API: `LLM(model=...)` with `generate`, `stream` and `chat`, on the engine."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import torch

from jamba_runtime.config import JambaConfig
from jamba_runtime.engine.config import EngineArgs
from jamba_runtime.engine.engine import LLMEngine
from jamba_runtime.engine.memory_plan import check_fits
from jamba_runtime.engine.outputs import RequestOutput
from jamba_runtime.engine.sampling_params import SamplingParams
from jamba_runtime.engine.tensor_parallel import Workers, start_workers
from jamba_runtime.errors import ContextLengthError, InvalidRequestError
from jamba_runtime.model.loader import load_model, resolve_device, resolve_model_path
from jamba_runtime.model.modeling import JambaForCausalLM
from jamba_runtime.model.sharding import check_tensor_parallel
from jamba_runtime.tokenizer.tokenizer import Tokenizer

Prompt = str | list[int]


class LLM:
    """A Jamba model with its tokenizer and engine, ready to generate.

    `LLM(model, **kwargs)` takes the fields of `EngineArgs` as keywords (device, dtype,
    max_model_len, tokenizer, local_files_only, quantization, tensor_parallel_size, load_format,
    engine), which documents them; `LLM.from_args(args)` takes an `EngineArgs`. With
    `tensor_parallel_size` > 1 this process is rank 0 and runs the engine; call `close()` (or use
    `with`) to stop the other ranks. One tensor-parallel `LLM` per process.

    Raises `InsufficientMemoryError` (on CUDA, before loading) when the model, dtype, quantization
    and context cannot fit the GPU; its message names the options that would.

    All prompts of one `generate` call run as one continuous batch. A request whose prompt plus
    `max_tokens` would pass `max_model_len` is not refused: it stops at the limit with
    `finish_reason="length"`. A prompt that alone reaches the limit raises `ContextLengthError`.

    Example:
        >>> llm = LLM(model="models/tiny")
        >>> out = llm.generate(["Hello"], SamplingParams(max_tokens=16, temperature=0))[0]
        >>> out.text, out.finish_reason
        >>> for delta in llm.stream("Once upon", SamplingParams(max_tokens=32)):
        ...     print(delta, end="")
        >>> llm.chat([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=32)).text
    """

    def __init__(self, model: str | Path, **kwargs: Any) -> None:
        self._start(EngineArgs(model, **kwargs))

    @classmethod
    def from_args(cls, args: EngineArgs) -> LLM:
        """Load what `args` says (see `EngineArgs`)."""
        llm = cls.__new__(cls)
        llm._start(args)
        return llm

    def _start(self, args: EngineArgs) -> None:
        self.args = args
        path = resolve_model_path(args.model, local_files_only=args.local_files_only)
        config = JambaConfig.from_file(path)
        check_tensor_parallel(config, args.tensor_parallel_size)
        limit = config.max_position_embeddings
        if args.max_model_len is not None and not 0 < args.max_model_len <= limit:
            raise InvalidRequestError(
                f"max_model_len={args.max_model_len} is invalid: it must be in 1..{limit}"
            )
        engine_config = args.engine_config()
        device = args.device
        if resolve_device(device).type == "cuda":
            # Refuse a setting that cannot fit before reading any weight, naming what would fit.
            check_fits(
                config,
                args.dtype,
                args.quantization,
                engine_config.max_model_len,
                engine_config,
                device,
                args.tensor_parallel_size,
            )
        self._workers: Workers | None = None
        tp = None
        if args.tensor_parallel_size > 1:
            self._workers = start_workers(
                path, args.tensor_parallel_size, resolve_device(device), str(args.dtype).removeprefix("torch."),
                args.quantization, num_threads=torch.get_num_threads(), load_format=args.load_format,
            )  # fmt: skip
            tp = self._workers.tp
            device = self._workers.device
        try:
            try:
                self.model: JambaForCausalLM = load_model(
                    path,
                    device=device,
                    dtype=args.dtype,
                    quantization=args.quantization,
                    tp=tp,
                    load_format=args.load_format,
                )
            except Exception as e:
                if self._workers is not None:  # the other ranks wait for every rank's status
                    with contextlib.suppress(InvalidRequestError):
                        self._workers.confirm_loaded(f"rank 0: {type(e).__name__}: {e}")
                raise
            if self._workers is not None:
                self._workers.confirm_loaded("ok")
        except BaseException:
            self.close()
            raise
        self.config = self.model.config
        self.tokenizer = Tokenizer.from_dir(args.tokenizer if args.tokenizer is not None else path)
        try:
            self.engine = LLMEngine(self.model, self.tokenizer, engine_config, tp)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the other ranks of a tensor-parallel `LLM` (nothing to do otherwise). Idempotent;
        the `LLM` cannot generate afterwards when it had other ranks."""
        workers, self._workers = getattr(self, "_workers", None), None
        if workers is not None:
            engine = getattr(self, "engine", None)
            workers.stop(engine.channel if engine is not None else None)

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self.engine.eos_token_ids

    @eos_token_ids.setter
    def eos_token_ids(self, ids: frozenset[int]) -> None:
        self.engine.eos_token_ids = frozenset(ids)

    # ---- public API ------------------------------------------------------------------------------
    def generate(
        self,
        prompts: Prompt | Seq[Prompt],
        params: SamplingParams | Seq[SamplingParams] | None = None,
        prefix_snapshot: str | None = None,
    ) -> list[RequestOutput]:
        """Complete each prompt (text, or token ids); one output per prompt, in order.

        `prefix_snapshot`: start every prompt that extends that snapshot's tokens from its saved
        state (see `save_prefix`) instead of recomputing the prefix."""
        seqs = self._add(_as_prompt_list(prompts), params, prefix_snapshot)
        try:
            while self.engine.has_unfinished():
                self.engine.step()
        except BaseException:
            self._abort_unfinished(seqs)
            raise
        return [s.output() for s in seqs]

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[str]:
        """Yield the completion of one prompt as text deltas, as tokens are generated."""
        (seq,) = self._add([prompt], params, None)
        try:
            while not seq.finished:
                for out in self.engine.step():
                    if out.request_id == seq.request_id and out.text:
                        yield out.text
        finally:
            self._abort_unfinished([seq])

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
        """The token ids of a conversation rendered with the chat template (as `chat` runs it).
        Raises `ContextLengthError` when they reach `max_model_len`, without tokenizing all of a
        long conversation (`LLMEngine.encode_prompt`)."""
        text = self.tokenizer.apply_chat_template(
            messages, tools=tools, documents=documents, add_generation_prompt=True
        )
        # The template writes BOS itself, as `Tokenizer.encode_chat`.
        return self.engine.encode_prompt(text, add_special_tokens=False)

    def save_prefix(self, prompt: Prompt, key: str) -> None:
        """Run `prompt` once and keep its whole state (KV blocks + Mamba state) under `key`, so
        later prompts that extend it skip recomputing it. The state is exact only at the end of
        `prompt`, so snapshot whole turns or documents, not arbitrary cut points."""
        (seq,) = self._add([prompt], SamplingParams(max_tokens=1, temperature=0), None, save_snapshot=key)
        while not seq.finished:
            self.engine.step()

    # ---- internals -------------------------------------------------------------------------------
    def _add(
        self,
        prompts: list[Prompt],
        params: SamplingParams | Seq[SamplingParams] | None,
        prefix_snapshot: str | None,
        save_snapshot: str | None = None,
    ) -> list:
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
        try:
            for i, (ids, p) in enumerate(zip(prompts, param_list, strict=True)):
                try:
                    seqs.append(
                        self.engine.add_request(
                            ids, p, prefix_snapshot=prefix_snapshot, save_snapshot=save_snapshot
                        )
                    )
                except (InvalidRequestError, ContextLengthError) as e:
                    raise type(e)(f"prompt {i}: {e}") from e
        except BaseException:
            self._abort_unfinished(seqs)
            raise
        return seqs

    def _abort_unfinished(self, seqs: list) -> None:
        for s in seqs:
            if not s.finished and s.request_id in self.engine.requests:
                self.engine.abort(s.request_id)


def _as_prompt_list(prompts: Prompt | Seq[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]  # one prompt given as token ids
    return prompts
