#!/usr/bin/env bash
# The GPU work of this project, in stages that fit a time-limited call on an
# offline accelerator machine (no network; everything comes with the
# repository and the folder experiments/offline/prepare.sh packs).
#
#   experiments/offline/stage.sh [-t SECONDS] STAGE [STAGE ...]
#
# Runs the stages in order within SECONDS of wall time in all (default 560:
# a 10-minute call with time left to pack). A stage still running at the
# deadline gets SIGTERM: the benchmarks keep what they measured (their JSON is
# rewritten after every run) and the sweep checkpoints and stops, so the same
# command resumes it. Everything to keep goes to $OUT (default ./out), at
# most 4 files:
#   check             nvidia-smi, jax.devices() and the GPU tests
#   train_step        benchmarks/train_step.py       -> train_step_$TAG.json
#   sweep_throughput  benchmarks/sweep_throughput.py -> sweep_throughput_$TAG.json
#   sweep             experiments/sweep.py on $SWEEP_CONFIG (default the
#                     gpu_h100 preset) with $SHARDS local shard processes
#                     (default 4: the largest gpu_h100 model keeps 7.3 GB,
#                     near the 9.6 GB an eighth gets) in runs/<config name>, then
#                     -> <config name>.tgz: records, plan, CSV, and once the
#                     plan is complete the fits, figures and report; never
#                     checkpoints or the compilation cache (the workdir keeps
#                     them for the next call on the same machine)
#   log.txt           every stage's output
# Bring results home with experiments/offline/collect.sh <folder with them>.
# On a fresh machine, send runs/<config name>/results along (the sweep skips
# the points recorded there).
#
# Environment: OUT, TAG (default h100), SHARDS, SWEEP_CONFIG, BUNDLE (default
# .offline), PYTHON (default python3), and extra flags for the benchmarks in
# TRAIN_STEP_FLAGS and SWEEP_THROUGHPUT_FLAGS (e.g. "--small" off a GPU).
set -uo pipefail
cd "$(dirname "$0")/../.."
START=$SECONDS
LIMIT=560
if [ "${1:-}" = "-t" ]; then LIMIT=$2; shift 2; fi
if [ $# -eq 0 ]; then
  sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
OUT=${OUT:-out}
TAG=${TAG:-h100}
SHARDS=${SHARDS:-4}
SWEEP_CONFIG=${SWEEP_CONFIG:-experiments/configs/gpu_h100.py}
SWEEP_NAME=$(basename "$SWEEP_CONFIG" .py)
BUNDLE=${BUNDLE:-.offline}
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/familial_jax_site}
RESERVE=40  # seconds after the last stage: 30 of grace before SIGKILL, then packing
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"

say() { echo "[stage.sh $(date -u +%H:%M:%S) +$((SECONDS - START))s] $*" | tee -a "$LOG"; }

# Packages: the wheels prepare.sh fetched (the versions CI installs), once a
# machine; they come before the image's own on PYTHONPATH.
if ls "$BUNDLE"/wheels/*.whl >/dev/null 2>&1 && [ ! -f "$SITE/.installed" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$SITE" "$BUNDLE"/wheels/*.whl 2>&1 | tee -a "$LOG"
  touch "$SITE/.installed"
  say "installed $(ls "$BUNDLE"/wheels | tr '\n' ' ')"
fi
if ! $PY -c "import familial_jax.sweep, ml_collections" 2>>"$LOG"; then
  say "familial_jax does not import here ($LOG says why): run" \
      "experiments/offline/prepare.sh where pip works and bring $BUNDLE"
  exit 2
fi
# The default corpus where prepare.sh packed it from (needs root, as on the
# lent machines); files already there are kept.
if [ -f "$BUNDLE/corpus.tar" ]; then
  tar -xf "$BUNDLE/corpus.tar" -C / --skip-old-files ||
    { say "cannot unpack the corpus to /"; exit 2; }
fi

# run NAME CMD...: CMD under the time left, output to the console and the log.
# 0 done, 124 stopped at the deadline, else the command's failure.
run() {
  local name=$1; shift
  local left=$((LIMIT - (SECONDS - START) - RESERVE))
  if [ "$left" -lt 30 ]; then
    say "$name: skipped, ${left}s left"
    return 124
  fi
  say "$name: start (${left}s left): $*"
  timeout -s TERM -k 30 "$left" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  case $rc in
    0) say "$name: done" ;;
    124|137|143) say "$name: stopped at the deadline (rc $rc); rerun to go on"; rc=124 ;;
    *) say "$name: FAILED (rc $rc)" ;;
  esac
  return "$rc"
}

pack_sweep() {
  [ -d "runs/$SWEEP_NAME/results" ] || return 0
  tar -czf "$OUT/$SWEEP_NAME.tgz" -C "runs/$SWEEP_NAME" \
    --exclude=./runs --exclude=./jax_cache .
  say "sweep: $(ls "runs/$SWEEP_NAME"/results/*.json 2>/dev/null | wc -l) records;" \
      "packed to $OUT/$SWEEP_NAME.tgz"
}

status=0
for stage in "$@"; do
  case $stage in
    check)
      run check bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version \
          --format=csv; "$0" -c "import jax; print(jax.__version__, jax.devices())" \
          && "$0" -m pytest -q -p no:cacheprovider tests/test_gpu.py' "$PY" ;;
    train_step)
      # shellcheck disable=SC2086
      run train_step $PY benchmarks/train_step.py \
        --output="$OUT/train_step_$TAG.json" ${TRAIN_STEP_FLAGS:-} ;;
    sweep_throughput)
      # shellcheck disable=SC2086
      run sweep_throughput $PY benchmarks/sweep_throughput.py \
        --output="$OUT/sweep_throughput_$TAG.json" ${SWEEP_THROUGHPUT_FLAGS:-} ;;
    sweep)
      run sweep $PY experiments/sweep.py --config="$SWEEP_CONFIG" \
        --workdir="runs/$SWEEP_NAME" --local_shards="$SHARDS"
      rc=$?
      pack_sweep
      (exit $rc) ;;
    *)
      say "unknown stage $stage (check, train_step, sweep_throughput, sweep)"
      false ;;
  esac
  rc=$?
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
done
say "all stages ended (exit $status); files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$status"
