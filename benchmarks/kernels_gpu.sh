#!/usr/bin/env bash
# The GPU check as one prepared script, for a lent GPU machine (torch + triton; no network; maybe no pytest, no
# diffusers). Run from anywhere:
#
#     bash benchmarks/kernels_gpu.sh [STAGE...]
#
# Stages (the default runs all, in the order tests trainer host quick train mainjob device compile mainjob-flow:
# what the last H200 lease did not finish first; each is useful alone, each has its own limit, sized from that
# lease's durations (tests 108 s, trainer 37 + 66 s, device 24 s, compile 29 s, mainjob-flow 73 s; host, quick,
# train and mainjob were cut at 20, 20, 60 and 90 s). The limits add up to 810 s, more than one 10-minute call:
# name the stages, e.g. `tests trainer host quick train` in one call and the rest in another; STAGE_SCALE=2 doubles
# them; the benches write their JSON as they go, so a stage cut short by its limit still brings back what it
# measured):
#
#   tests    CUDA property tests of the fused op (tests/test_kernels.py: through the lean launch path, so the
#            compiled-kernel launches meet this Triton's launcher) and the reference, if pytest+hypothesis exist
#   device   rdpo-zoo bench --device-time: wall and CUDA-graph device time, P·D 2^20…2^26, fp32 and bf16, the copy
#            bandwidth at each size, eager maths beside (--check's correctness figures come with `quick`)
#   host     rdpo-zoo bench --host: the host cost per call, general and lean paths (CPU work; a few seconds)
#   trainer  benchmarks/gpu_trainer_check.py: the trainer's iterations on CUDA, fp32 and bf16 autocast, for the main
#            job on tiny and on tiny-flow (flow-sde) and flow-grpo on tiny-flow (log-ratios exactly 0 at the first
#            step, finite losses, a LoRA that reloads)
#   train    rdpo-zoo bench --train: one trainer iteration on a random SD-1.5-shaped UNet at 512×512, branching
#            and trajectory pairs, gradient checkpointing off/on, beside a plain loop
#   compile  the torch.compile baselines (dynamic=False; default and reduce-overhead) at P·D 2^20, 2^22, 2^24
#   quick    the former quick grid with --check (the fused op against float64 at every point)
#   mainjob  the README's main job on CUDA, as written (tiny, 40 iterations, the 256-pair evaluation), timed; its
#            eval.json, metrics.jsonl and config.json kept (not the LoRA)
#   mainjob-flow  the same on tiny-flow (--model tiny-flow --scheduler flow-sde --eta 0.7)
#
# The trainer stages need diffusers, peft, accelerate and transformers: wheels for them (benchmarks/gpu_wheels.sh
# fetches them on a machine with PyPI) are installed from ${WHEELS:-benchmarks/wheels} without network; without
# them those stages say so and are skipped.
#
# Every stage writes <device>/<stage>.txt (and .json) under $RESULTS (default benchmarks/results); after each stage
# the folder is archived again as $OUT/<device>-results.tar.gz, so a run cut short still brings back what it
# finished in one file ($OUT: the device runner's folder, which returns few files; default $RESULTS). Off CUDA (to check this script) the device name is "cpu" and the stages
# that need a GPU are skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
results="${RESULTS:-benchmarks/results}"
out="${OUT:-$results}"
scale="${STAGE_SCALE:-1}"
wheels="${WHEELS:-benchmarks/wheels}"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
py=python3
if [ -z "${NO_INSTALL:-}" ]; then
    $py -m pip install -q --no-build-isolation --no-deps . >/dev/null || { echo "install failed"; exit 1; }
    if ls "$wheels"/*.whl >/dev/null 2>&1; then  # the trainer's stack, offline; what the image has stays
        $py -m pip install -q --no-index --find-links "$wheels" diffusers peft accelerate transformers >/dev/null 2>&1 \
            || echo "note: installing the trainer's stack from $wheels failed"
    fi
fi
name=$($py -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-') if torch.cuda.is_available() else 'cpu')") \
    || exit 1
dir="$results/$name"
mkdir -p "$dir"
cuda=$([ "$name" != cpu ] && echo 1 || echo "")
trainer_stack=$($py -P -c "import diffusers, peft, accelerate, transformers" 2>/dev/null && echo 1 || echo "")
{ nvidia-smi 2>/dev/null; $py -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'triton', triton.__version__)"
  $py -P -c "import diffusers, peft, accelerate, transformers as t; print('diffusers', diffusers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'transformers', t.__version__)" 2>&1 | tail -1
} >"$dir/env.txt" 2>&1
# -P: the repository root must not shadow the installed package (kernels/ is mapped into rdpo_zoo.kernels)
rdpo=($py -P -c "from rdpo_zoo.cli import main; main()")
bench=("${rdpo[@]}" bench)
archive() { tar -czf "$out/$name-results.tar.gz" -C "$results" "$name" 2>/dev/null; }
status=0
stage() {  # stage NAME SECONDS COMMAND...: run with a limit, output to $dir/NAME.txt, then archive
    local tag=$1 limit=$(( $2 * scale )); shift 2
    echo "== $tag (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$dir/$tag.txt" 2>&1
    local rc=$?
    tail -n 25 "$dir/$tag.txt"
    echo "== $tag: exit $rc after $((SECONDS - t0))s" | tee -a "$dir/stages.txt"
    [ $rc -eq 0 ] || status=1
    archive
}
main_job() {  # main_job TAG SECONDS [TRAIN FLAGS...]: the README's main job, timed; the LoRA and checkpoints dropped
    local tag=$1 limit=$2; shift 2
    stage "$tag" "$limit" "${rdpo[@]}" train --estimator delta-q --loss rdpo \
        --output-dir "$dir/$tag-run" "$@"
    rm -rf "$dir/$tag-run"/lora "$dir/$tag-run"/checkpoint-*
    archive
}
skip() { echo "== $1: skipped ($2)" | tee -a "$dir/stages.txt" "$dir/$1.txt"; archive; }
[ $# -gt 0 ] || set -- tests trainer host quick train mainjob device compile mainjob-flow
for want in "$@"; do
    case $want in
        tests)
            if [ -z "$cuda" ]; then skip tests "no CUDA GPU"
            elif $py -c "import pytest, hypothesis" 2>/dev/null; then
                stage tests 150 env TRITON_INTERPRET=0 $py -P -m pytest -q -rf --maxfail=10 -p no:cacheprovider \
                    tests/test_kernels.py tests/test_reference.py tests/test_objective_kernel.py
            else skip tests "pytest/hypothesis not installed"; fi ;;
        device)
            if [ -z "$cuda" ]; then skip device "no CUDA GPU"
            else stage device 50 "${bench[@]}" --device-time --providers triton,eager --json "$dir/device.json"; fi ;;
        host) stage host 40 "${bench[@]}" --host --json "$dir/host.json" ;;
        trainer)
            if [ -z "$trainer_stack" ]; then skip trainer "diffusers/peft/accelerate/transformers missing (see $wheels)"
            elif [ -z "$cuda" ]; then skip trainer "no CUDA GPU (on a CPU: python3 -P benchmarks/gpu_trainer_check.py)"
            else stage trainer 120 $py -P benchmarks/gpu_trainer_check.py ${TRAINER_FLAGS:-}; fi ;;
        train)
            if [ -z "$trainer_stack" ]; then skip train "diffusers/peft/accelerate/transformers missing (see $wheels)"
            else stage train 120 "${bench[@]}" --train $([ -z "$cuda" ] && echo "--train-size tiny") \
                --json "$dir/train.json"; fi ;;
        compile)
            if [ -z "$cuda" ]; then skip compile "no CUDA GPU"
            else stage compile 40 "${bench[@]}" --device-time --providers eager,compile,compile-ro --dtypes fp32 \
                --modes full --D 16384,65536,262144 --json "$dir/compile.json"; fi ;;
        quick)
            if [ -z "$cuda" ]; then skip quick "no CUDA GPU"
            else stage quick 40 "${bench[@]}" --quick --check --json "$dir/quick.json"; fi ;;
        mainjob|mainjob-flow)
            flags=(); [ "$want" = mainjob-flow ] && flags=(--model tiny-flow --scheduler flow-sde --eta 0.7)
            if [ -z "$trainer_stack" ]; then skip "$want" "diffusers/peft/accelerate/transformers missing (see $wheels)"
            elif [ -z "$cuda" ]; then skip "$want" "no CUDA GPU (the main job on a CPU is the README's first block)"
            else main_job "$want" $([ "$want" = mainjob ] && echo 150 || echo 100) "${flags[@]}"; fi ;;
        *) echo "unknown stage $want (expected tests, trainer, device, host, quick, train, compile, mainjob," \
                "mainjob-flow)"; exit 2 ;;
    esac
done
echo "results: $dir (archived as $out/$name-results.tar.gz)"
exit $status
