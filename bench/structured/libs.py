"""Which grammar library: xgrammar vs llguidance, measured on our schema suite, CPU.

For each library and tokenizer (the tiny test tokenizer, 1,024 tokens, and a 65,536-token
byte-level BPE trained on Python sources (`bench.structured.bpe65k`) as a stand-in for Jamba's
65,536-token vocab, which no hub can give us):

  coverage   every schema of tests/data/schemas/ plus `PROBES` (one keyword each that a library
             might not enforce): compiled, refused with an error, or compiled and then walked.
  validity   for each compiled schema, `--walks` masked random walks (each step a token allowed by
             the library's mask: EOS when allowed with p=1/2, else with p=1/2 one that contains a
             quote, bracket or comma, else any), validated with jsonschema (formats checked).
             "silent" = walks that ended and are invalid: a keyword compiled but not enforced.
  mask time  the time to fill one bitmask row per step of those walks (batch 1), and to fill 32
             rows at once with each library's batch API (batch 32), p50 / p99 in microseconds.
  compile    time to compile each schema (ms), cold.

    .venv/bin/python -m bench.structured.libs              # ~5 min on 2 cores (trains the 65k BPE once, ~1 min)
    .venv/bin/python -m bench.structured.libs --quick      # tiny tokenizer only, fewer walks
"""

from __future__ import annotations

import argparse
import glob
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import jsonschema
import torch

from bench.common.paths import REPO, RESULTS
from bench.common.stats import nearest_rank
from bench.structured.bpe65k import bpe65k_tokenizer_json
from jamba_runtime.structured.json_schema import JSON_OPTIONS
from jamba_runtime.tokenizer.tiny import TINY_SPECIAL_TOKENS, write_tiny_tokenizer

DEFAULT_OUT = RESULTS / "structured_libs.json"
EOS = (2, 5)  # <|endoftext|>, <|eom|> in both tokenizers (Jamba's special tokens first)

# One risky keyword each, bounded so that a random walk ends.
PROBES: dict[str, dict] = {
    "uniqueItems": {
        "type": "array",
        "items": {"enum": [1, 2, 3]},
        "minItems": 2,
        "maxItems": 3,
        "uniqueItems": True,
    },
    "contains": {"type": "array", "items": {"enum": [1, 2, 3]}, "maxItems": 3, "contains": {"const": 3}},
    "if_then": {
        "type": "object",
        "properties": {"a": {"enum": [1, 2]}, "b": {"enum": [1, 2]}},
        "required": ["a"],
        "additionalProperties": False,
        "if": {"properties": {"a": {"const": 1}}},
        "then": {"required": ["b"]},
    },
    "not": {"not": {"type": "string"}, "enum": ["x", 1, True]},
    "dependentRequired": {
        "type": "object",
        "properties": {"a": {"const": 1}, "b": {"const": 2}},
        "additionalProperties": False,
        "dependentRequired": {"a": ["b"]},
    },
    "minProperties_optional": {
        "type": "object",
        "properties": {"a": {"const": 1}, "b": {"const": 2}},
        "additionalProperties": False,
        "minProperties": 1,
    },
    "propertyNames": {
        "type": "object",
        "additionalProperties": {"const": 1},
        "maxProperties": 2,
        "propertyNames": {"enum": ["x", "y"]},
    },
    "format_unknown": {"type": "string", "format": "iri-reference", "maxLength": 8},
    "pattern_lookahead": {"type": "string", "pattern": "^(?=a)[ab]{1,3}$"},
    "oneOf_overlapping": {"oneOf": [{"enum": [1, 2]}, {"enum": [2, 3]}]},
    "multipleOf_float": {"type": "number", "multipleOf": 0.1, "minimum": 0, "maximum": 1},
    "exclusive_int": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 4},
    "unevaluatedProperties": {
        "type": "object",
        "properties": {"a": {"const": 1}},
        "unevaluatedProperties": False,
    },
    "pattern_unanchored": {"type": "string", "pattern": "b", "maxLength": 3},
    "const_object": {"const": {"a": [1, {"b": None}]}},
}


# ---- tokenizers ----------------------------------------------------------------------------------
def tiny_tokenizer_json() -> str:
    d = Path(tempfile.mkdtemp())
    write_tiny_tokenizer(d)
    return (d / "tokenizer.json").read_text()


# ---- the two libraries behind one small interface --------------------------------------------------
class LLGuidance:
    name = "llguidance"

    def __init__(self, tokenizer_json: str, vocab_size: int) -> None:
        import llguidance

        self.llg = llguidance
        self.tok = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=list(EOS))
        self.vocab_size = vocab_size
        self.executor = llguidance.LLExecutor()
        self.version = llguidance.__version__

    def compile(self, schema: dict) -> Any:
        g = self.llg.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        is_error, msgs = self.llg.LLMatcher.validate_grammar_with_warnings(g, self.tok)
        if is_error:
            raise ValueError(msgs[0])
        m = self.llg.LLMatcher(self.tok, g, log_level=0)
        if m.is_error():
            raise ValueError(m.get_error())
        return m

    def matcher(self, compiled: Any) -> Any:
        return compiled.deep_copy()

    def fill(self, m: Any, bitmask: torch.Tensor, row: int) -> None:
        v = bitmask[row]
        m.unsafe_compute_mask_ptr(v.data_ptr(), v.numel() * 4)

    def fill_batch(self, ms: list[Any], bitmask: torch.Tensor) -> None:
        self.executor.unsafe_compute_mask_ptr(
            [(m, i) for i, m in enumerate(ms)], bitmask.data_ptr(), bitmask.shape[1] * 4, bitmask.shape[0]
        )

    def accept(self, m: Any, token: int) -> bool:
        return m.consume_token(token)

    def done(self, m: Any) -> bool:
        return m.is_stopped()


class XGrammar:
    name = "xgrammar"

    def __init__(self, tokenizer_json: str, vocab_size: int) -> None:
        import xgrammar

        self.xgr = xgrammar
        vocab = json.loads(tokenizer_json)["model"]["vocab"]
        encoded = [""] * vocab_size
        for tok, i in vocab.items():
            if i < vocab_size:
                encoded[i] = tok
        for i, tok in enumerate(TINY_SPECIAL_TOKENS):
            encoded[i] = tok
        info = xgrammar.TokenizerInfo(
            encoded, xgrammar.VocabType.BYTE_LEVEL, vocab_size=vocab_size, stop_token_ids=list(EOS)
        )
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=2, cache_enabled=False)
        self.batch = xgrammar.BatchGrammarMatcher()
        self.vocab_size = vocab_size
        from importlib.metadata import version

        self.version = version("xgrammar")

    def compile(self, schema: dict) -> Any:
        return self.compiler.compile_json_schema(
            json.dumps(schema), any_whitespace=False, separators=(", ", ": "), strict_mode=True
        )

    def matcher(self, compiled: Any) -> Any:
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, m: Any, bitmask: torch.Tensor, row: int) -> None:
        m.fill_next_token_bitmask(bitmask, row)

    def fill_batch(self, ms: list[Any], bitmask: torch.Tensor) -> None:
        self.batch.batch_fill_next_token_bitmask(ms, bitmask)

    def accept(self, m: Any, token: int) -> bool:
        return m.accept_token(token)

    def done(self, m: Any) -> bool:
        return m.is_terminated()


# ---- walks ----------------------------------------------------------------------------------------
def allowed_ids(bitmask_row: torch.Tensor, vocab_size: int) -> list[int]:
    import numpy as np

    bits = np.unpackbits(bitmask_row.numpy().view(np.uint8), bitorder="little")[:vocab_size]
    return np.flatnonzero(bits).tolist()


def walk(
    lib: Any, compiled: Any, token_bytes: list[bytes], rng: random.Random, cap: int, fill_times: list[float]
) -> tuple[str | None, list[int]]:
    """One masked random walk; returns (text, tokens) when it ended, (None, tokens) at the cap."""
    m = lib.matcher(compiled)
    bitmask = torch.zeros((1, (lib.vocab_size + 31) // 32), dtype=torch.int32)
    tokens: list[int] = []
    for _ in range(cap):
        if lib.done(m):
            break
        t0 = time.perf_counter_ns()
        lib.fill(m, bitmask, 0)
        fill_times.append((time.perf_counter_ns() - t0) / 1000)
        allowed = allowed_ids(bitmask[0], lib.vocab_size)
        if not allowed:
            return None, tokens
        eos = [t for t in allowed if t in EOS]
        if eos and rng.random() < 0.5:
            return b"".join(token_bytes[t] for t in tokens).decode("utf-8", "replace"), tokens
        closing = [t for t in allowed if t not in EOS and any(c in token_bytes[t] for c in b'"]},')]
        pool = closing if closing and rng.random() < 0.5 else [t for t in allowed if t not in EOS] or eos
        t = rng.choice(pool)
        if t in EOS:
            return b"".join(token_bytes[x] for x in tokens).decode("utf-8", "replace"), tokens
        if not lib.accept(m, t):
            return None, tokens
        tokens.append(t)
    if lib.done(m):
        return b"".join(token_bytes[t] for t in tokens).decode("utf-8", "replace"), tokens
    return None, tokens


def token_bytes_of(tokenizer_json: str, vocab_size: int) -> list[bytes]:
    import llguidance

    tok = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=list(EOS))
    return [b"" if tok.is_special_token(i) else tok.decode_bytes([i]) for i in range(vocab_size)]


def validate(schema: dict, text: str) -> str | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return f"not JSON: {e}"
    v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errs = list(v.iter_errors(value))
    return errs[0].message[:120] if errs else None


def run(
    tokenizer_name: str,
    tokenizer_json: str,
    vocab_size: int,
    schemas: dict[str, dict],
    walks: int,
    cap: int,
    seed: int,
) -> dict:
    token_bytes = token_bytes_of(tokenizer_json, vocab_size)
    out: dict[str, Any] = {}
    for cls in (XGrammar, LLGuidance):
        lib = cls(tokenizer_json, vocab_size)
        rng = random.Random(seed)
        res: dict[str, Any] = {"version": lib.version, "schemas": {}}
        fill_times: list[float] = []
        compile_ms: list[float] = []
        compiled_all: list[Any] = []
        for name, schema in schemas.items():
            entry: dict[str, Any] = {}
            t0 = time.perf_counter()
            try:
                compiled = lib.compile(schema)
            except Exception as e:  # noqa: BLE001 - each library raises its own types
                entry["error"] = str(e).splitlines()[0][:160]
                res["schemas"][name] = entry
                continue
            compile_ms.append((time.perf_counter() - t0) * 1000)
            compiled_all.append(compiled)
            ended = invalid = 0
            example = None
            for _ in range(walks):
                text, _ = walk(lib, compiled, token_bytes, rng, cap, fill_times)
                if text is None:
                    continue
                ended += 1
                err = validate(schema, text)
                if err:
                    invalid += 1
                    example = example or {"text": text[:160], "error": err}
            entry.update(walks=walks, ended=ended, invalid=invalid)
            if example:
                entry["invalid_example"] = example
            res["schemas"][name] = entry
        # batch 32: 32 matchers (schemas cycled), each advanced by its own random walk
        batch_times: list[float] = []
        ms = [lib.matcher(compiled_all[i % len(compiled_all)]) for i in range(32)]
        bitmask = torch.zeros((32, (vocab_size + 31) // 32), dtype=torch.int32)
        for _ in range(48):
            t0 = time.perf_counter_ns()
            lib.fill_batch(ms, bitmask)
            batch_times.append((time.perf_counter_ns() - t0) / 1000)
            for i, m in enumerate(ms):
                allowed = [t for t in allowed_ids(bitmask[i], vocab_size) if t not in EOS]
                if lib.done(m) or not allowed:
                    ms[i] = lib.matcher(compiled_all[(i + 7) % len(compiled_all)])
                else:
                    lib.accept(m, rng.choice(allowed))
        res["mask_us_batch1"] = {
            "p50": nearest_rank(fill_times, 0.5),
            "p99": nearest_rank(fill_times, 0.99),
            "n": len(fill_times),
        }
        res["mask_us_batch32"] = {
            "p50": nearest_rank(batch_times, 0.5),
            "p99": nearest_rank(batch_times, 0.99),
            "n": len(batch_times),
        }
        res["compile_ms"] = {
            "p50": nearest_rank(compile_ms, 0.5),
            "max": max(compile_ms) if compile_ms else None,
        }
        out[lib.name] = res
    return out


def summarize(tokenizer_name: str, result: dict, suite: set[str]) -> None:
    print(f"\n== tokenizer {tokenizer_name}")
    print(
        f"{'':12s} {'suite ok':>9s} {'refused':>8s} {'silent':>7s} {'mask b1 p50/p99 us':>20s} "
        f"{'mask b32 p50/p99 us':>21s} {'compile p50/max ms':>19s}"
    )
    for lib, r in result.items():
        s = r["schemas"]
        ok = sum(1 for n in suite if "error" not in s[n] and s[n]["invalid"] == 0)
        refused = sum(1 for n in s if "error" in s[n])
        silent = sum(1 for n in s if "error" not in s[n] and s[n]["invalid"] > 0)
        b1, b32, c = r["mask_us_batch1"], r["mask_us_batch32"], r["compile_ms"]
        print(
            f"{lib:12s} {ok:>5d}/{len(suite):<3d} {refused:>8d} {silent:>7d} "
            f"{b1['p50']:>9.1f} / {b1['p99']:<8.1f} {b32['p50']:>9.1f} / {b32['p99']:<9.1f} "
            f"{c['p50']:>8.1f} / {c['max']:<8.1f}"
        )
    print("\nper schema (refused = compile error; invalid/ended walks):")
    names = list(next(iter(result.values()))["schemas"])
    for n in names:
        cells = []
        for lib, r in result.items():
            e = r["schemas"][n]
            cells.append(
                f"{lib}: "
                + (f"refused ({e['error'][:60]})" if "error" in e else f"{e['invalid']}/{e['ended']} invalid")
            )
        print(f"  {n:32s} " + " | ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--walks", type=int, default=8)
    ap.add_argument("--cap", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    suite = {
        Path(p).stem: json.loads(Path(p).read_text())
        for p in sorted(glob.glob(str(REPO / "tests/data/schemas/*.json")))
    }
    schemas = {**suite, **{f"probe:{k}": v for k, v in PROBES.items()}}
    tokenizers = [("tiny-1k", tiny_tokenizer_json(), 1024)]
    if not args.quick:
        tokenizers.append(("bpe-65k", bpe65k_tokenizer_json(), 65536))
    walks = 2 if args.quick else args.walks
    results: dict[str, Any] = {"method": __doc__, "walks": walks, "cap": args.cap, "tokenizers": {}}
    for name, tj, vocab in tokenizers:
        r = run(name, tj, vocab, schemas, walks, args.cap, args.seed)
        results["tokenizers"][name] = r
        summarize(name, r, set(suite))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
