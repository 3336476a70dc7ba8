"""A tiny, deterministic byte-level BPE tokenizer with Jamba 1.5's special tokens.

No Jamba `tokenizer.json` can be fetched here (no model hub), so tests and the tiny random model
use this one. It is trained with the `tokenizers` library on an English-ish corpus generated in
code from a fixed seed, so every run writes byte-identical files.

Key difference to the real Jamba 1.5 tokenizer: the real one is a 65,536-token BPE with
SentencePiece-style `▁` word pieces and byte fallback; this one is GPT-2-style byte-level BPE.
Both round-trip any UTF-8 text. Special token *strings* are Jamba's; their *ids* are not: here they
sit at the start of the vocab, ids 0..19, so a vocab of a few hundred tokens stays dense. The ids
that happen to agree with the real vocab are `<|pad|>` 0, `<|startoftext|>` 1, `<|endoftext|>` 2
and `<|unk|>` 3; in the real vocab `<|eom|>` is believed to be 518 (Jamba 1.5's
`eos_token_id: [2, 518]`), here it is 5. Callers that write a model config must take the ids from
`tiny_model_token_ids()`, never hard-code the real model's.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from jamba_runtime.tokenizer.chat_template import load_builtin_template

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<|unk|>"
BOM_TOKEN = "<|bom|>"
EOM_TOKEN = "<|eom|>"

# Order is the id order in the tiny vocab. The role tokens are what the chat template builds as
# "<|" + role + "|>"; the tag tokens are the section markers of the Jamba 1.5 chat format.
TINY_SPECIAL_TOKENS: tuple[str, ...] = (
    PAD_TOKEN,
    BOS_TOKEN,
    EOS_TOKEN,
    UNK_TOKEN,
    BOM_TOKEN,
    EOM_TOKEN,
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|tool|>",
    "<tool_definitions>",
    "</tool_definitions>",
    "<tool_calls>",
    "</tool_calls>",
    "<documents>",
    "</documents>",
    "<citations>",
    "</citations>",
    "<active_output_modes>",
    "</active_output_modes>",
)

_MIN_VOCAB_SIZE = len(TINY_SPECIAL_TOKENS) + 256  # specials + the 256 byte symbols
_CORPUS_SEED = 1234
_CORPUS_SENTENCES = 4000

_WORDS = (
    "the of and to in is was for that on with as by at from it this be are or an which his her has "
    "have had not but were they their one all been more when who will would there can also into its "
    "first new time after two other some these about may only than over most years like then many "
    "made later she he we you your what how where why do does did so if no yes up out just any each "
    "model models token tokens text language data document documents answer question questions "
    "context system user assistant tool tools call function result results weather city temperature "
    "search query file page source chunk memory state layer layers attention expert experts cache "
    "sequence prompt length value values number list name type string object json array key true "
    "false null error request response server client agent agents plan step steps run input output "
    "water river mountain forest village people history world country government science music art "
    "school book books story stories family house garden morning evening night day week month year "
    "small large long short good great best high low old young early late open close simple clear "
    "read write find use make take give show tell ask help work play move turn keep start stop "
    "because however although therefore while during before between under around through against"
).split()

_CAPITALISED = (
    "London Paris Berlin Tokyo Jerusalem Madrid Rome Cairo Lagos Lima Oslo Seoul Jamba Mamba Python "
    "January March June October Monday Friday Alice Bob Carol Dave"
).split()

# Non-English pieces so that some merges cover multi-byte UTF-8 sequences, not only ASCII.
_FOREIGN = (
    "café naïve résumé über Straße façade déjà vu señor niño "
    "日本語 東京 中文 汉字 한국어 서울 Привет мир Ελληνικά שלום عربى "
    "😀 🚀 ✅ 🌍 👍🏽 ❤️ …"
).split()

_PUNCT = (".", ".", ".", ",", "?", "!", ";", ":")


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 16))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), rng.choice(_CAPITALISED))
    if rng.random() < 0.08:
        words.insert(rng.randrange(len(words)), rng.choice(_FOREIGN))
    if rng.random() < 0.15:
        words.insert(rng.randrange(len(words)), str(rng.randint(0, 2025)))
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice(_PUNCT)


def _json_line(rng: random.Random) -> str:
    # Tool calls and tool definitions are JSON, so give the merges some JSON shapes to learn.
    key, other = rng.choice(_WORDS), rng.choice(_WORDS)
    payload = {"name": f"get_{key}", "arguments": {other: rng.choice(_CAPITALISED), "n": rng.randint(0, 99)}}
    return json.dumps(payload, indent=rng.choice((None, 2)))


def tiny_corpus() -> list[str]:
    """Return the training corpus: the same list of strings on every call and every machine."""
    rng = random.Random(_CORPUS_SEED)
    lines: list[str] = []
    for _ in range(_CORPUS_SENTENCES):
        if rng.random() < 0.1:
            lines.append(_json_line(rng))
        else:
            lines.append(" ".join(_sentence(rng) for _ in range(rng.randint(1, 3))))
    return lines


def tiny_special_token_ids() -> dict[str, int]:
    """Map each special token string of the tiny tokenizer to its id (ids 0..19, in vocab order)."""
    return {token: i for i, token in enumerate(TINY_SPECIAL_TOKENS)}


def tiny_model_token_ids() -> dict[str, int | list[int]]:
    """Return the ids a model `config.json` needs to match the tiny tokenizer.

    `eos_token_id` lists every id that ends a generation: `<|endoftext|>` and `<|eom|>` (the end
    of an assistant turn), as Jamba 1.5's own config lists `[2, 518]`.
    """
    ids = tiny_special_token_ids()
    return {
        "pad_token_id": ids[PAD_TOKEN],
        "bos_token_id": ids[BOS_TOKEN],
        "eos_token_id": [ids[EOS_TOKEN], ids[EOM_TOKEN]],
    }


def build_tiny_tokenizer(vocab_size: int = 1024) -> Tokenizer:
    """Train and return the tiny byte-level BPE `tokenizers.Tokenizer` (deterministic)."""
    if vocab_size < _MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the tiny tokenizer needs at least {_MIN_VOCAB_SIZE}"
        )
    tokenizer = Tokenizer(models.BPE())
    # No regex split on digits etc. beyond GPT-2's: the point is a small, ordinary byte-level BPE.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        # All 256 byte symbols, so any UTF-8 text encodes without an unknown token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tiny_corpus(), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    # Like Jamba's tokenizer (add_bos_token), encoding with special tokens prepends <|startoftext|>.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return tokenizer


def write_tiny_tokenizer(directory: Path, vocab_size: int = 1024) -> None:
    """Write `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` to `directory`.

    The files load with `jamba_runtime.tokenizer.tokenizer.Tokenizer.from_dir` and with `transformers`'
    `AutoTokenizer.from_pretrained(directory)`. `tokenizer_config.json` carries our built-in
    Jamba chat template. Writing twice gives byte-identical files.

    Raises `ValueError` when `vocab_size` cannot hold the special tokens plus the 256 bytes.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(vocab_size)
    tokenizer.save(str(directory / "tokenizer.json"), pretty=True)

    extra_special = list(TINY_SPECIAL_TOKENS[4:])
    special_tokens_map = {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": UNK_TOKEN,
        "additional_special_tokens": extra_special,
    }
    tokenizer_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        **special_tokens_map,
        "extra_special_tokens": extra_special,
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": load_builtin_template(),
    }
    _write_json(directory / "special_tokens_map.json", special_tokens_map)
    _write_json(directory / "tokenizer_config.json", tokenizer_config)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
