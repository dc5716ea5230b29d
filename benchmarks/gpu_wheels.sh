#!/usr/bin/env bash
# Fetch wheels of the trainer's stack for the lent GPU machine (Python 3.12, x86_64 Linux, torch and triton already
# there, no network), into benchmarks/wheels/ (git-ignored). Run on a machine with PyPI, then carry the folder with
# the code; benchmarks/kernels_gpu.sh installs from it with `pip install --no-index --find-links`.
#
#     bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]     # default 3.12
#
# The versions are this environment's (so the GPU runs what the tests ran); torch, triton and their own
# dependencies are not fetched (the image has them).
set -euo pipefail
cd "$(dirname "$0")/.."
pyver="${1:-3.12}"
dest=benchmarks/wheels
mkdir -p "$dest"
py=${PYTHON:-.venv/bin/python}
pins=$($py - <<'PY'
from importlib import metadata
names = ["diffusers", "peft", "accelerate", "transformers", "huggingface-hub", "safetensors", "tokenizers", "regex",
         "requests", "pillow", "numpy", "pyyaml", "psutil", "tqdm", "packaging", "importlib-metadata", "zipp",
         "charset-normalizer", "idna", "urllib3", "certifi", "hf-xet", "filelock", "typing-extensions", "fsspec"]
pins = []
for name in names:
    try:
        pins.append(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
print(" ".join(pins))
PY
)
# binary wheels for the GPU's interpreter and platform; --no-deps: exactly the list above
$py -m pip download --quiet --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --platform any --dest "$dest" $pins
du -sh "$dest"
ls "$dest"
