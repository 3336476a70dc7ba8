"""A 65,536-token byte-level BPE, the structured-output benches' stand-in for Jamba's 65,536-token
vocab (which no hub can give us here): the grammar masks then cost what they cost at Jamba's size."""

from __future__ import annotations

import glob
import sysconfig
from pathlib import Path

from bench.common.paths import RESULTS
from jamba_runtime.tokenizer.tiny import TINY_SPECIAL_TOKENS

BPE65K_DIR = RESULTS / "bpe65k"


def bpe65k_tokenizer_json() -> str:
    """The tokenizer.json of a 65,536-token byte-level BPE with Jamba's special tokens first, trained
    on first use (~1 min) on ~60 MB of the installed Python sources and cached under
    bench/results/bpe65k/."""
    path = BPE65K_DIR / "tokenizer.json"
    if not path.exists():
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        files = sorted(glob.glob(sysconfig.get_paths()["purelib"] + "/**/*.py", recursive=True))

        def texts(limit: int = 60_000_000):  # noqa: ANN202
            n = 0
            for f in files:
                try:
                    t = Path(f).read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                n += len(t)
                yield t
                if n > limit:
                    return

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=65536,
            min_frequency=2,
            special_tokens=list(TINY_SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts(), trainer=trainer)
        BPE65K_DIR.mkdir(parents=True, exist_ok=True)
        tok.save(str(path))
    return path.read_text()
