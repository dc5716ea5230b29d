#!/usr/bin/env bash
# The kernels' whole GPU check as one short script, for a lent GPU machine (torch + triton; no network, no
# diffusers, maybe no pytest). Run from anywhere:
#
#     bash benchmarks/kernels_gpu.sh [STAGE...]   # results go to $OUT if set (the device runner's folder),
#                                                 # else to benchmarks/results/; stages: quick full rdpo tests
#                                                 # (default: all four, in that order)
#
# 1. installs the package (no dependencies, no build isolation: the machine has no network);
# 2. the quick grid with --check: the fused op against a float64 reference run at every point, then timed;
# 3. the full grid with --check (P 1,8,64 × D 16384,65536 × fp32,bf16 × shared,per-branch), JSON for the repo;
# 4. RDPO's fused loss (dpo + Ψ, λ = 100) on the shared and Diffusion-DPO's noised layouts;
# 5. the property tests on CUDA, if pytest and hypothesis are installed.
# Each stage has its own time limit (STAGE_SCALE=2 doubles them) so that one slow stage cannot eat the others;
# at most 8 files are written (the device runner returns no more). Takes about 5 minutes on an H100/H200.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
scale="${STAGE_SCALE:-1}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-build-isolation --no-deps . >/dev/null || exit 1
name=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))") || exit 1
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } \
    >"$out/$name-env.txt" 2>&1
# -P: the repository root must not shadow the installed package (kernels/ is mapped into rdpo_zoo.kernels)
bench=(python3 -P -c "from rdpo_zoo.cli import main; main()" bench)
stage() {  # stage NAME SECONDS COMMAND...: run with a limit, output to $out/$name-NAME.txt
    local tag=$1 limit=$(( $2 * scale )); shift 2
    echo "== $tag (limit ${limit}s)"
    timeout "$limit" "$@" >"$out/$name-$tag.txt" 2>&1
    local rc=$?
    tail -n 30 "$out/$name-$tag.txt"
    echo "== $tag: exit $rc"
    [ $rc -eq 0 ] || status=1
}
status=0
[ $# -gt 0 ] || set -- quick full rdpo tests
for want in "$@"; do
    case $want in
        quick) stage quick 90 "${bench[@]}" --quick --check --json "$out/$name-quick.json" ;;
        full) stage full 240 "${bench[@]}" --check --json "$out/$name.json" ;;
        rdpo) stage rdpo 90 "${bench[@]}" --check --loss dpo --penalty psi --psi-lambda 100 --layouts shared,noised \
                  --P 8,64 --D 65536 --dtypes fp32,bf16 --json "$out/$name-rdpo.json" ;;
        tests)
            if python3 -c "import pytest, hypothesis" 2>/dev/null; then
                stage tests 150 env TRITON_INTERPRET=0 python3 -P -m pytest -q -rf --maxfail=10 -p no:cacheprovider \
                    tests/test_kernels.py tests/test_reference.py
            else
                echo "pytest/hypothesis not installed: the property tests did not run (bench --check did)" \
                    | tee "$out/$name-tests.txt"
            fi ;;
        *) echo "unknown stage $want (expected quick, full, rdpo, tests)"; exit 2 ;;
    esac
done
exit $status
