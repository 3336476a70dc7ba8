"""Turn a prompt into checked token ids (`PromptEncoder.prompt_ids`), tokenizing text only as far as
the length check needs: a text that cannot fit the context is refused after tokenizing a bounded
part of it (none of it, or prefixes of about `limit` tokens, or fewer than `limit *
max_token_chars` characters where no prefix can be cut), whatever its length.

Two bounds decide without the whole text's tokens, and both are exact (a text that fits is never
refused). They come from the tokenizer's vocab, read once, on the first text longer than the limit:

- Characters: no token covers more than `max_token_chars` characters, so a text of at least
  `limit * max_token_chars` characters has at least `limit` tokens. It is refused untokenized.
- Prefix: when no token of the vocab runs from a non-space character into a whitespace character
  (byte-level BPE and SentencePiece-style vocabs: a token may start with a space, not end in one
  after a word), a text cut just before such a place tokenizes as the first tokens of the whole
  text, so a prefix that alone has `limit` tokens proves the text has as many. Prefixes grow
  geometrically until one reaches the limit or the text is whole.

The argument assumes the tokenizer's normalizer never shortens text and its pre-tokenizer splits
by character classes (true of Jamba's and of byte-level tokenizers); a vocab with a token that
crosses from a word into whitespace only loses the prefix bound.
"""

from __future__ import annotations

import operator
import re
import threading
from dataclasses import dataclass

from jamba_runtime.errors import ContextLengthError, InvalidRequestError
from jamba_runtime.tokenizer.tokenizer import Tokenizer

# A place to cut: a non-space character, then whitespace (Python's `\s` is `str.isspace`).
_CUT = re.compile(r"\S(?=\s)")
# A vocab token that crosses such a place.
_CROSSES = re.compile(r"\S\s")
_FIRST_WINDOW = 1024  # characters searched back for a cut, doubled until one is found


@dataclass(frozen=True)
class VocabBounds:
    """What the vocab says about how much text one token covers.

    Attributes:
        max_token_chars: most characters of text one token can stand for.
        cuts_at_whitespace: no token covers a non-space character followed by whitespace, so a
            text cut there tokenizes as a prefix of the whole text's tokens.
    """

    max_token_chars: int
    cuts_at_whitespace: bool

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> VocabBounds:
        """Read every token of `tokenizer` (its string and its decoded text: a SentencePiece
        piece's `▁` is one character of text, a byte-level token's string has a symbol per byte)."""
        longest, crosses = 1, False
        for i in range(tokenizer.vocab_size):
            piece = tokenizer.id_to_token(i)
            if piece is None:
                continue
            text = tokenizer.decode([i], skip_special_tokens=False)
            longest = max(longest, len(piece), len(text))
            crosses = crosses or _CROSSES.search(text) is not None
        return cls(longest, not crosses)


class PromptEncoder:
    """Encodes prompt text for a context of `limit` tokens, refusing what cannot fit early.

    Thread-safe: the vocab is read once, under a lock; encoding keeps no state.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._bounds: VocabBounds | None = None
        self._lock = threading.Lock()

    @property
    def bounds(self) -> VocabBounds:
        """The vocab's `VocabBounds` (read on first use)."""
        with self._lock:
            if self._bounds is None:
                self._bounds = VocabBounds.of(self.tokenizer)
            return self._bounds

    def prompt_ids(self, prompt: str | list[int], limit: int, vocab_size: int) -> list[int]:
        """Tokenize (text, `encode`) or check (ids) a prompt for a context of `limit` tokens and a
        vocab of `vocab_size` ids.

        Raises `InvalidRequestError` for empty text or ids, non-integer ids or ids outside the
        vocab; `ContextLengthError` when the prompt leaves no room for a new token."""
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("prompt is empty: give at least one token of text")
            ids = self.encode(prompt, limit)
        else:
            if hasattr(prompt, "__len__") and len(prompt) >= limit:
                raise _too_long(len(prompt), limit)  # before looking at each id
            try:
                ids = [operator.index(t) for t in prompt]
            except TypeError:
                raise InvalidRequestError(
                    "prompt must be text or a list of integer token ids: encode it with the tokenizer"
                ) from None
        if not ids:
            raise InvalidRequestError("prompt is empty: give at least one token of text")
        if any(not 0 <= t < vocab_size for t in ids):
            raise InvalidRequestError(f"prompt has token ids outside the vocab (0..{vocab_size - 1})")
        if len(ids) >= limit:
            raise _too_long(len(ids), limit)
        return ids

    def encode(self, text: str, limit: int, add_special_tokens: bool = True) -> list[int]:
        """The token ids of `text`, as `Tokenizer.encode` gives them, when there are fewer than
        `limit`.

        Raises `ContextLengthError` when `text` has `limit` tokens or more; for a text longer than
        `limit` characters it is found on a bounded part of the text (see the module docstring),
        and the message gives the count found so far ("at least").
        """
        if len(text) > limit:
            self._refuse_early(text, limit, add_special_tokens)
        ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        if len(ids) >= limit:
            raise _too_long(len(ids), limit)
        return ids

    def encode_many(
        self, texts: list[str], limit: int | None, add_special_tokens: bool = True
    ) -> list[list[int] | ContextLengthError]:
        """`encode` of each text (no length check where `limit` is None), the texts of at most
        `limit` characters in one `Tokenizer.encode_batch`; each item is the ids or the error
        `encode` raises for that text."""
        out: list[list[int] | ContextLengthError | None] = [None] * len(texts)
        short = [i for i, t in enumerate(texts) if limit is None or len(t) <= limit]
        encoded = self.tokenizer.encode_batch([texts[i] for i in short], add_special_tokens)
        for i, ids in zip(short, encoded, strict=True):
            out[i] = ids
            if limit is not None and len(ids) >= limit:
                out[i] = _too_long(len(ids), limit)
        for i, text in enumerate(texts):
            if out[i] is None:  # longer than `limit` characters: the early checks first
                try:
                    out[i] = self.encode(text, limit, add_special_tokens)  # type: ignore[arg-type]
                except ContextLengthError as exc:
                    out[i] = exc
        return out  # type: ignore[return-value]

    def _refuse_early(self, text: str, limit: int, add_special_tokens: bool) -> None:
        """Raise `ContextLengthError` if a bound shows `text` has `limit` tokens or more; return
        when the whole text must be tokenized to know."""
        bounds = self.bounds
        if len(text) >= limit * bounds.max_token_chars:
            raise ContextLengthError(
                f"prompt has at least {len(text) // bounds.max_token_chars:,} tokens ({len(text):,} "
                f"characters, at most {bounds.max_token_chars} per token), limit {limit:,} including "
                "at least one new token: shorten it or raise max_model_len"
            )
        if not bounds.cuts_at_whitespace:
            return
        size = limit  # a character is at least part of a token: the first prefix may already do
        while size < len(text):
            cut = _last_cut(text, size)
            if cut is None:
                return
            count = len(self.tokenizer.encode(text[:cut], add_special_tokens=add_special_tokens))
            if count >= limit:
                raise ContextLengthError(
                    f"prompt has at least {count:,} tokens (in its first {cut:,} of {len(text):,} "
                    f"characters), limit {limit:,} including at least one new token: shorten it or "
                    "raise max_model_len"
                )
            # Aim a little past the limit at the density seen so far; at least double, so the
            # prefixes cost at most about twice the last one.
            size = max(2 * size, cut * min(8, -(-5 * limit // (4 * max(count, 1)))))


def _too_long(num_tokens: int, limit: int) -> ContextLengthError:
    return ContextLengthError(
        f"prompt has {num_tokens:,} tokens, limit {limit:,} including at least one new token: "
        "shorten it or raise max_model_len"
    )


def _last_cut(text: str, end: int) -> int | None:
    """The last position at or before `end` where a non-space character is followed by
    whitespace (the cut keeps that character); None when there is none."""
    window = _FIRST_WINDOW
    while True:
        start = max(0, end - window)
        last = None
        for match in _CUT.finditer(text, start, end + 1):
            last = match
        if last is not None:
            return last.end()
        if start == 0:
            return None
        window *= 2
