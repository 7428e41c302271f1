#!/usr/bin/env bash
# The train-step benchmark (benchmarks/train_step.py) on one GPU, for docs/training.md: the
# configuration's own global batch (1) and larger ones, each at train.matmul_precision default
# (TF32 on NVIDIA), float32 and bfloat16, with the projected time for 500 BIWI epochs.
#
#     bash benchmarks/gpu_train_sweep.sh OUT_DIR [RUN ...]
#
# A RUN is b<global batch>-<matmul precision>, e.g. b16-bfloat16; without any, all of RUNS below
# in that order. Made to fit a short GPU lease: each run goes under `timeout`; a run starts only
# while at least MIN_RUN_SECONDS (default 160) of SWEEP_SECONDS (default 520) are left, and then
# gets what is left, at most 200 s. Each run's table is appended to OUT_DIR/tables.md, and the
# end of its stderr to OUT_DIR/errors.log, as it ends (with OUT_DIR/gpu.txt three files: a lease
# hands back at most eight). Buckets are compiled side by side (--compile-threads 6) with XLA's
# GEMM autotuning off (--xla_gpu_autotune_level=0; on an H200 the deterministic flag, which also
# turns it off, cost 2.5 % of the step). Even so one run took 140-150 s on an H200 (six buckets' compilation, 78-88 s
# of it), so a 10-minute call fits three runs: docs/training.md says which have been measured.
# SWEEP_ARGS adds arguments to every run (a trial on the CPU: SWEEP_ARGS="--vertices 300
# --clips 8" PYTHON=python MIN_RUN_SECONDS=40).
set -u
out=${1:?usage: gpu_train_sweep.sh OUT_DIR [RUN ...]}
shift
RUNS=(b1-default b16-default b16-bfloat16 b16-float32 b1-bfloat16 b1-float32 b64-default)
(($# > 0)) && RUNS=("$@")
budget=${SWEEP_SECONDS:-520}
min_run=${MIN_RUN_SECONDS:-160}
benchmark="$(dirname "$0")/train_step.py"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0"
python=${PYTHON:-python3}

{
    echo "# gpu_train_sweep.sh $(date -u '+%Y-%m-%d %H:%M UTC'): ${RUNS[*]}"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    fi
    "$python" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, jax.devices())"
} | tee -a "$out/gpu.txt"

for name in "${RUNS[@]}"; do
    if [[ ! $name =~ ^b([0-9]+)-(default|float32|tensorfloat32|bfloat16)$ ]]; then
        echo "$name: not a run (b<batch>-<default|float32|tensorfloat32|bfloat16>), skipped"
        continue
    fi
    batch=${BASH_REMATCH[1]}
    precision=${BASH_REMATCH[2]}
    left=$((budget - SECONDS))
    if ((left < min_run)); then
        echo "$name: skipped, ${left} s of the budget left"
        continue
    fi
    timeout -k 10 $((left < 200 ? left : 200)) "$python" "$benchmark" --steps 5 \
        --compile-threads 6 --batch "$batch" --matmul-precision "$precision" ${SWEEP_ARGS:-} \
        >"$out/run.md" 2>"$out/run.err"
    rc=$?
    { echo "## $name (exit status $rc, at ${SECONDS} s)"; echo; cat "$out/run.md"; echo; } \
        >>"$out/tables.md"
    { echo "## $name"; tail -n 30 "$out/run.err"; } >>"$out/errors.log"
    echo "$name (rc $rc, ${SECONDS} s):" \
        "$(grep -E '^\| (steady-state frames|projected|peak device|compile per|padding)' \
            "$out/run.md" | cut -d'|' -f3 | tr '\n' ';')"
    rm -f "$out/run.md" "$out/run.err"
done
echo "done in ${SECONDS} s"
