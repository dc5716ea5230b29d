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
pins=$($py - "$pyver" <<'PY'
# the dependency closure of the trainer's stack as installed here (markers for CPython $pyver on x86_64 Linux, no
# extras), pinned to this environment's versions; torch, triton and the CUDA libraries are the image's
import sys
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement

env = default_environment()
env.update(python_version=sys.argv[1], python_full_version=sys.argv[1] + ".0", sys_platform="linux",
           platform_system="Linux", platform_machine="x86_64", implementation_name="cpython", extra="")
skip = {"torch", "triton"}
todo, seen, pins = ["diffusers", "peft", "accelerate", "transformers"], set(), []
while todo:
    name = todo.pop().lower().replace("_", "-")
    if name in seen or name in skip or name.startswith("nvidia-"):
        continue
    seen.add(name)
    try:
        pins.append(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        continue  # not needed here (a marker this machine does not meet): not fetched
    for line in metadata.requires(name) or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            todo.append(req.name)
print(" ".join(sorted(pins)))
PY
)
# binary wheels for the GPU's interpreter and platform; --no-deps: exactly the list above
$py -m pip download --quiet --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --platform any --dest "$dest" $pins
du -sh "$dest"
ls "$dest"
