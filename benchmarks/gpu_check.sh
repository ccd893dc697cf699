#!/usr/bin/env bash
# The GPU check: on a fresh CUDA machine that has PyTorch but none of our other packages, in at most 8 minutes,
# install our packages from wheels/ and run pytest -m gpu, bench_leq.py in eager, compile and compile+cudagraphs
# modes, bench_world_model.py, and a 2k-step leq_state.py --cudagraphs run on generated pointmaze data.
# It prints one table (stage, status, seconds, key figure) and stops at the first failure with its output.
#
#   benchmarks/gpu_check.sh --prepare [PYTHON_VERSION]   # here, with PyPI: the wheels into wheels/ (git-ignored)
#   benchmarks/gpu_check.sh                               # there, from the repository root with wheels/ beside it
#   benchmarks/gpu_check.sh --dry-run                     # on a CPU: the same stages with tiny CPU commands
#
# PYTHON_VERSION is the GPU machine's Python (e.g. 3.12); it defaults to this machine's. torch is not fetched:
# the GPU machine has its own CUDA build. dm-control (pixels only) and wandb (--track only) are left out.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
STARTED=$SECONDS
ROWS=()

# What the check needs beyond PyTorch and its own requirements (jinja2, setuptools, typing-extensions): our
# requirements but dm-control (pixels only) and wandb (--track only), and what they import. Not carried: numpy and
# pillow (minari imports PIL to read or write any dataset). PyTorch machines have them (torchvision needs both), and
# their wheels (16 and 7 MiB) would not fit beside mujoco's and gymnasium-robotics' (26 MiB each) in 64 MiB.
WHEELS="tyro docstring_parser typeguard minari h5py gymnasium cloudpickle farama_notifications gymnasium_robotics
pettingzoo imageio mujoco absl_py etils glfw tqdm pytest iniconfig pluggy pygments packaging"

wheel_requirements() {  # requirements.txt without torch and what the GPU check does not use
    grep -vE '^(#|torch|numpy|dm-control|wandb|$)' requirements.txt
}

prepare() {  # download with dependency resolution (versions that fit together), then keep only WHEELS
    local version=${1:-$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
    local wheel keep
    rm -rf wheels && mkdir wheels
    wheel_requirements >"$WORK/requirements.txt"
    "$PYTHON" -m pip download -q --only-binary=:all: --python-version "$version" --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 -d wheels -r "$WORK/requirements.txt" || exit 1
    for wheel in wheels/*.whl; do
        keep=no
        for name in $WHEELS; do [[ ${wheel#wheels/} == "$name"-* ]] && keep=yes; done
        [ $keep = yes ] || rm "$wheel"
    done
    echo "wheels/ for Python $version: $(ls wheels | wc -l) wheels, $(du -sm wheels | cut -f1) MiB"
}

print_table() {
    printf '\n%-30s %-7s %8s  %s\n' stage status seconds "key figure"
    local row
    for row in "${ROWS[@]}"; do
        IFS='|' read -r stage status seconds figure <<<"$row"
        printf '%-30s %-7s %8s  %s\n' "$stage" "$status" "$seconds" "$figure"
    done
    echo "total $((SECONDS - STARTED)) s"
}

# stage NAME FIGURE COMMAND...: run COMMAND, logging to $WORK/NAME.log; FIGURE is a shell snippet that reads the
# log on stdin and prints the key figure. On a failure: the table, the stage's output, exit 1.
stage() {
    local name=$1 figure=$2 start=$SECONDS status=ok
    shift 2
    echo "== $name: $*" >&2
    "$@" >"$WORK/$name.log" 2>&1 || status=FAILED
    ROWS+=("$name|$status|$((SECONDS - start))|$(bash -c "$figure" <"$WORK/$name.log" 2>/dev/null | head -1)")
    if [ "$status" != ok ]; then
        print_table
        echo "---- $name failed; its output (last 80 lines of $WORK/$name.log):"
        tail -n 80 "$WORK/$name.log"
        exit 1
    fi
}

last_line='grep -v "^\s*$" | tail -1'
leq_row='awk "/^(eager|compile)/ {print \$3 \" steps/s, \" \$4 \" ms/step, warm-up \" \$5 \" s\"}"'
world_model_row='grep "s/epoch" | sed -E "s/ *\(.*//; s/^ +//" | tr -s " " | paste -sd, -'
leq_run='tr "\r" "\n" | grep -E "^step .*steps/s|^final score" | tail -2 | sed -E "s/^step +([0-9]+) \| +([0-9.]+ steps\/s).*/\2 at step \1/" | paste -sd";" -'

case "${1:-}" in
--prepare)
    prepare "${2:-}"
    exit 0
    ;;
--dry-run)
    DEVICE=cpu
    LEQ_MODES=(eager eager eager)  # a CPU cannot capture CUDA graphs, and compiling takes minutes there
    LEQ_SIZES=(--steps 5 --warmup 1 --routings balanced)
    WM_SIZES=(--num-transitions 20000 --timed-batches 10 --skip-compile --sampling-batches 256 --sampling-repeats 2)
    RUN_FLAGS=(--no-compile --total-steps 40 --batch-size 16 --model-batch-size 16 --horizon 3
        --expansion-interval 20 --expansion-size 64 --rollout-length 2 --world-model-max-epochs 1 --bc-steps 5
        --bc-batch-size 32 --fqe-steps 5 --fqe-batch-size 32 --eval-interval 20 --eval-episodes 2
        --final-eval-episodes 2 --checkpoint-interval 20 --log-interval 20)
    DATA_STEPS=2000
    ROWS+=("install|skipped|0|dry run: the packages of this machine")
    ;;
"")
    DEVICE=cuda
    LEQ_MODES=(eager compile compile+cudagraphs)
    LEQ_SIZES=(--steps 100 --warmup 3 --routings exact)
    WM_SIZES=(--sampling-repeats 5)
    RUN_FLAGS=(--cudagraphs --total-steps 2000 --world-model-max-epochs 3 --bc-steps 2000 --fqe-steps 2000
        --eval-interval 1000 --eval-episodes 5 --final-eval-episodes 10 --checkpoint-interval 1000 --log-interval 500)
    DATA_STEPS=100000
    [ -d wheels ] || { echo "no wheels/ here: run benchmarks/gpu_check.sh --prepare on a machine with PyPI first"; exit 1; }
    stage "numpy + pillow" 'echo "this machine has $(cat)"' "$PYTHON" -c "import importlib.util as util, sys
missing = [name for name in ('numpy', 'PIL') if util.find_spec(name) is None]
print('numpy and pillow') if not missing else sys.exit(f'{missing} missing: put their wheels into wheels/ too')"
    stage install 'echo "$(ls wheels | wc -l) wheels"' \
        "$PYTHON" -m pip install -q --no-index --no-deps wheels/*.whl
    ;;
*)
    echo "usage: benchmarks/gpu_check.sh [--prepare [PYTHON_VERSION] | --dry-run]"
    exit 2
    ;;
esac

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} MINARI_DATASETS_PATH=$WORK/minari
stage "pytest -m gpu" "$last_line" "$PYTHON" -m pytest -m gpu -q tests
for i in 0 1 2; do
    mode=(eager compile compile+cudagraphs)
    stage "bench_leq ${mode[i]}" "$leq_row" \
        "$PYTHON" benchmarks/bench_leq.py --device $DEVICE --modes "${LEQ_MODES[i]}" "${LEQ_SIZES[@]}"
done
stage bench_world_model "$world_model_row" "$PYTHON" benchmarks/bench_world_model.py --device $DEVICE "${WM_SIZES[@]}"
stage "pointmaze data" 'grep -o "read back: [0-9]* transitions"' \
    "$PYTHON" collect_dataset.py pointmaze-umaze-diverse --steps $DATA_STEPS
stage "leq_state run" "$leq_run" bash -c "cd $WORK && \"$PYTHON\" \"$REPO/leq_state.py\" --env-id pointmaze-umaze-diverse \
    --device $DEVICE ${RUN_FLAGS[*]}"
print_table
