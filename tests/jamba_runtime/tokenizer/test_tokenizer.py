"""Tokenizer: the tiny tokenizer's files, encode/decode against transformers, streaming detokenization,
and the errors a user gets for missing or broken files."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jamba_runtime import Tokenizer
from jamba_runtime.errors import TokenizerError
from jamba_runtime.tokenizer.chat_template import load_builtin_template
from jamba_runtime.tokenizer.tiny import (
    TINY_SPECIAL_TOKENS,
    tiny_model_token_ids,
    tiny_special_token_ids,
    write_tiny_tokenizer,
)

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog. 1234567890",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nand   runs    of spaces",
    "café naïve résumé Straße façade",
    "日本語のテキストと中文汉字，还有한국어.",
    "Emoji: 😀🚀✅ family 👨‍👩‍👧‍👦 flag 🇮🇱 skin tone 👍🏽 heart ❤️",
    "Привет, мир! Ελληνικά שלום עולם مرحبا بالعالم",
    "combining: e\u0301 a\u0308 zero-width\u200bspace",
    '{"name": "get_weather", "arguments": {"city": "Zürich", "n": 3}}',
    "def f(x):\n    return x ** 2  # code\n",
    "",
    "\x00\x01 control chars \x7f and \ufeffBOM",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny_tokenizer")
    write_tiny_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def tok(tiny_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(tiny_dir)


@pytest.fixture(scope="module")
def hf_tok(tiny_dir: Path) -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(tiny_dir)


def _random_text(rng: random.Random, n: int) -> str:
    # Mix of ASCII, Latin-1, CJK, emoji and arbitrary BMP/astral code points (no surrogates).
    pools = [
        (0x20, 0x7E),
        (0xA0, 0x17F),
        (0x4E00, 0x9FFF),
        (0x1F300, 0x1FAFF),
        (0x0, 0xD7FF),
        (0xE000, 0x10FFFF),
    ]
    chars = []
    for _ in range(n):
        lo, hi = rng.choice(pools)
        chars.append(chr(rng.randint(lo, hi)))
    return "".join(chars)


# ---- the tiny tokenizer's files ------------------------------------------------------------------
def test_tiny_tokenizer_writes_the_three_files(tiny_dir: Path) -> None:
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    special_map = json.loads((tiny_dir / "special_tokens_map.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == load_builtin_template()
    for name, token in [
        ("bos_token", "<|startoftext|>"),
        ("eos_token", "<|endoftext|>"),
        ("pad_token", "<|pad|>"),
        ("unk_token", "<|unk|>"),
    ]:
        assert config[name] == special_map[name] == token
    tokenizer_json = json.loads((tiny_dir / "tokenizer.json").read_text(encoding="utf-8"))
    assert len(tokenizer_json["model"]["vocab"]) == 1024


def test_tiny_tokenizer_is_deterministic(tmp_path: Path, tiny_dir: Path) -> None:
    names = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    write_tiny_tokenizer(tmp_path / "again")
    for name in names:
        assert (tmp_path / "again" / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    # A fresh process too: BPE training must not depend on per-process hash seeds. The stub
    # package skips jamba_runtime/__init__.py, whose torch import would cost seconds here.
    root = Path(__file__).resolve().parents[3]
    code = (
        "import sys, importlib.util; from pathlib import Path; "
        "spec = importlib.util.spec_from_file_location('jamba_runtime', sys.argv[2] + '/__init__.py', "
        "submodule_search_locations=[sys.argv[2]]); "
        "sys.modules['jamba_runtime'] = importlib.util.module_from_spec(spec); "
        "from jamba_runtime.tokenizer.tiny import write_tiny_tokenizer; "
        "write_tiny_tokenizer(Path(sys.argv[1]))"
    )
    package = str(root / "jamba_runtime")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "other"), package], check=True, cwd=root)
    for name in names:
        assert (tmp_path / "other" / name).read_bytes() == (tiny_dir / name).read_bytes(), name


def test_tiny_special_token_ids(tok: Tokenizer) -> None:
    ids = tiny_special_token_ids()
    assert list(ids) == list(TINY_SPECIAL_TOKENS)
    assert list(ids.values()) == list(range(len(TINY_SPECIAL_TOKENS)))
    for token, token_id in ids.items():
        assert tok.token_to_id(token) == token_id
        assert tok.id_to_token(token_id) == token
    # The ids that agree with the real Jamba vocab.
    assert ids["<|pad|>"] == 0 and ids["<|startoftext|>"] == 1 and ids["<|endoftext|>"] == 2
    assert tiny_model_token_ids() == {
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": [2, ids["<|eom|>"]],
    }


def test_tiny_tokenizer_vocab_size(tmp_path: Path) -> None:
    write_tiny_tokenizer(tmp_path / "small", vocab_size=300)
    assert Tokenizer.from_dir(tmp_path / "small").vocab_size == 300
    with pytest.raises(ValueError, match="vocab_size"):
        write_tiny_tokenizer(tmp_path / "too_small", vocab_size=200)


# ---- Tokenizer basics ----------------------------------------------------------------------------
def test_special_ids(tok: Tokenizer) -> None:
    ids = tiny_special_token_ids()
    assert tok.vocab_size == 1024
    assert tok.bos_token_id == ids["<|startoftext|>"]
    assert tok.pad_token_id == ids["<|pad|>"]
    assert tok.eos_token_ids == [ids["<|endoftext|>"], ids["<|eom|>"]]
    assert tok.chat_template == load_builtin_template()


@pytest.mark.parametrize("text", TEXTS)
def test_roundtrip(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    with_bos = tok.encode(text)
    assert with_bos == [tok.bos_token_id, *ids]
    assert tok.decode(with_bos) == text


def test_roundtrip_random_unicode(tok: Tokenizer) -> None:
    rng = random.Random(0)
    for _ in range(50):
        text = _random_text(rng, rng.randint(1, 80))
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_special_token_strings_encode_to_their_ids(tok: Tokenizer) -> None:
    ids = tiny_special_token_ids()
    text = "<|bom|><|user|> Hi<|eom|>"
    encoded = tok.encode(text, add_special_tokens=False)
    assert encoded[:2] == [ids["<|bom|>"], ids["<|user|>"]] and encoded[-1] == ids["<|eom|>"]
    assert tok.decode(encoded, skip_special_tokens=False) == text
    assert tok.decode(encoded) == " Hi"


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_matches_transformers(tok: Tokenizer, hf_tok: Any, add_special_tokens: bool) -> None:
    rng = random.Random(1)
    texts = [*TEXTS, "<|bom|><|system|> x<|eom|><tool_calls>[]</tool_calls>"]
    texts += [_random_text(rng, 40) for _ in range(20)]
    for text in texts:
        ours = tok.encode(text, add_special_tokens=add_special_tokens)
        assert ours == hf_tok.encode(text, add_special_tokens=add_special_tokens), text
        for skip in (True, False):
            assert tok.decode(ours, skip_special_tokens=skip) == hf_tok.decode(ours, skip_special_tokens=skip)


def test_transformers_loads_tokenizer_file_directly(tok: Tokenizer, tiny_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tiny_dir / "tokenizer.json"))
    for text in TEXTS:
        assert fast.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)


# ---- streaming ------------------------------------------------------------------------------------
def _stream(tok: Tokenizer, ids: list[int], skip_special_tokens: bool = True) -> list[str]:
    decoder = tok.incremental_decoder(skip_special_tokens=skip_special_tokens)
    deltas = [decoder.add(i) for i in ids]
    return [*deltas, decoder.flush()]


@pytest.mark.parametrize("text", [t for t in TEXTS if t])
def test_incremental_decoder_matches_full_decode(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text, add_special_tokens=False)
    deltas = _stream(tok, ids)
    assert "".join(deltas) == tok.decode(ids) == text
    # Complete text only: never a replacement character for a split code point.
    assert all("\ufffd" not in d for d in deltas)


def test_incremental_decoder_holds_split_characters(tok: Tokenizer) -> None:
    text = "🚀👨‍👩‍👧‍👦日本語🇮🇱"
    ids = tok.encode(text, add_special_tokens=False)
    # Byte-level BPE splits these characters over several tokens.
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    decoder = tok.incremental_decoder()
    deltas = [decoder.add(i) for i in ids]
    assert "" in deltas
    assert "".join(deltas) == text
    assert decoder.flush() == ""


@pytest.mark.parametrize("skip", [True, False])
def test_incremental_decoder_with_special_tokens(tok: Tokenizer, skip: bool) -> None:
    ids = tok.encode(
        "<|bom|><|assistant|> Sure 😀 <tool_calls>[]</tool_calls><|eom|>", add_special_tokens=True
    )
    assert "".join(_stream(tok, ids, skip_special_tokens=skip)) == tok.decode(ids, skip_special_tokens=skip)


def test_incremental_decoder_on_random_ids(tok: Tokenizer) -> None:
    # A random model emits arbitrary byte tokens, so invalid UTF-8 must stream like a full decode.
    rng = random.Random(2)
    for _ in range(30):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 40))]
        for skip in (True, False):
            assert "".join(_stream(tok, ids, skip)) == tok.decode(ids, skip_special_tokens=skip)


# ---- loading and errors ---------------------------------------------------------------------------
def test_missing_tokenizer_json(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="tokenizer.json") as info:
        Tokenizer.from_dir(tmp_path)
    assert "write_tiny_tokenizer" in str(info.value)
    (tmp_path / "tokenizer.model").write_bytes(b"")
    with pytest.raises(TokenizerError, match="save_pretrained"):
        Tokenizer.from_dir(tmp_path)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.from_dir(tmp_path / "nope")


def test_broken_files(tmp_path: Path, tiny_dir: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_bytes((tiny_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text("[1, 2", encoding="utf-8")
    with pytest.raises(TokenizerError, match="tokenizer_config.json"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nope|>"}), encoding="utf-8")
    with pytest.raises(TokenizerError, match="<|nope|>"):
        Tokenizer.from_dir(tmp_path)


def test_without_config_uses_jamba_names_and_builtin_template(tmp_path: Path, tiny_dir: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes((tiny_dir / "tokenizer.json").read_bytes())
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.bos_token_id == 1 and tok.eos_token_ids[0] == 2 and len(tok.eos_token_ids) == 2
    assert tok.chat_template_source == "built-in"
    assert tok.encode("hi")[0] == 1


def test_chat_template_sources(tmp_path: Path, tiny_dir: Path) -> None:
    for name in ["tokenizer.json", "special_tokens_map.json"]:
        (tmp_path / name).write_bytes((tiny_dir / name).read_bytes())
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = [{"name": "default", "template": "A"}, {"name": "tool_use", "template": "B"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert Tokenizer.from_dir(tmp_path).chat_template == "A"
    (tmp_path / "chat_template.jinja").write_text("C", encoding="utf-8")
    assert Tokenizer.from_dir(tmp_path).chat_template == "C"
    assert Tokenizer.from_dir(tmp_path, chat_template="D").chat_template == "D"
    del config["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (tmp_path / "chat_template.jinja").unlink()
    assert Tokenizer.from_dir(tmp_path).chat_template == load_builtin_template()


def test_add_bos_token_without_post_processor(tmp_path: Path, tiny_dir: Path) -> None:
    # A tokenizer.json without a BOS post-processor still gets BOS when the config asks for it.
    data = json.loads((tiny_dir / "tokenizer.json").read_text(encoding="utf-8"))
    data["post_processor"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.encode("hi")[0] == tok.bos_token_id
    assert tok.encode("hi", add_special_tokens=False)[0] != tok.bos_token_id
    config["add_bos_token"] = False
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert Tokenizer.from_dir(tmp_path).encode("hi")[0] != tok.bos_token_id
