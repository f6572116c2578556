#!/usr/bin/env bash
# Brings home what experiments/offline/stage.sh left in its output folder:
#   <name>.tgz             -> runs/<name>/ (so the next call can send
#                             runs/<name>/results along) and its records,
#                             plan, CSV, fits, report and figures ->
#                             experiments/results/<name>/ (records/ holds the
#                             per-point JSON files)
#   train_step_*.json,
#   sweep_throughput_*.json -> benchmarks/results/
#   log.txt                -> runs/offline_logs/<UTC time>.log
# Commit what lands under experiments/results/ and benchmarks/results/.
#
#   experiments/offline/collect.sh FOLDER
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC=${1:?usage: experiments/offline/collect.sh FOLDER}
[ -d "$SRC" ] || { echo "collect: no folder $SRC" >&2; exit 2; }
shopt -s nullglob
for f in "$SRC"/train_step_*.json "$SRC"/sweep_throughput_*.json; do
  cp "$f" benchmarks/results/
  echo "collect: $f -> benchmarks/results/"
done
for f in "$SRC"/*.tgz; do
  name=$(basename "$f" .tgz)
  mkdir -p "runs/$name" "experiments/results/$name/records"
  tar -xzf "$f" -C "runs/$name"
  cp "runs/$name"/results/*.json "experiments/results/$name/records/"
  for x in plan.json results.csv fits.json report.md; do
    if [ -f "runs/$name/$x" ]; then cp "runs/$name/$x" "experiments/results/$name/"; fi
  done
  if [ -d "runs/$name/figures" ]; then
    mkdir -p "experiments/results/$name/figures"
    cp "runs/$name"/figures/* "experiments/results/$name/figures/"
  fi
  echo "collect: $f -> runs/$name, experiments/results/$name" \
       "($(ls "runs/$name"/results/*.json | wc -l) records)"
done
if [ -f "$SRC/log.txt" ]; then
  mkdir -p runs/offline_logs
  cp "$SRC/log.txt" "runs/offline_logs/$(date -u +%Y%m%dT%H%M%SZ).log"
fi
