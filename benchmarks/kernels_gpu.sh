#!/usr/bin/env bash
# The kernels' whole GPU check as one short script, for a lent GPU machine (torch + triton; no network, no
# diffusers, maybe no pytest). Run from anywhere:
#
#     bash benchmarks/kernels_gpu.sh            # results go to $OUT if set (the device runner's folder),
#                                               # else to benchmarks/results/
#
# 1. installs the package (no dependencies, no build isolation: the machine has no network);
# 2. the quick grid with --check: the fused op against a float64 reference run at every point, then timed;
# 3. the full grid with --check (P 1,8,64 × D 16384,65536 × fp32,bf16 × shared,per-branch), JSON for the repo;
# 4. the property tests on CUDA, if pytest and hypothesis are installed.
# Expected to take a few minutes, most of it torch.compile of the reference.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
python3 -m pip install -q --no-build-isolation --no-deps . || exit 1
name=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))") || exit 1
bench() { python3 -c "from rdpo_zoo.cli import main; main()" bench "$@"; }
status=0
bench --quick --check --json "$out/$name-quick.json" 2>"$out/$name-quick.log" | tee "$out/$name-quick.txt" || status=1
bench --check --json "$out/$name.json" 2>"$out/$name.log" | tee "$out/$name.txt" || status=1
if python3 -c "import pytest, hypothesis" 2>/dev/null; then
    TRITON_INTERPRET=0 python3 -m pytest -q -x -p no:cacheprovider tests/test_kernels.py 2>&1 | tail -40 \
        | tee "$out/$name-tests.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
else
    echo "pytest/hypothesis not installed: the property tests did not run (bench --check did)" | tee "$out/$name-tests.txt"
fi
exit $status
