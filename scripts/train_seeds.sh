#!/usr/bin/env bash
# Further seeds of the bundle's students, for its Table 1 over seeds (checkpoints/README.md): the six students
# of scripts/train_bundle.sh with the same recipe and budget, on the shipped teacher, the seed the only
# difference; then `advit seeds` adds their evaluations (never their weights) to the bundle and its card.
#
#   bash scripts/train_seeds.sh SEED [SEED ...]     # e.g. 1 2 (seed 0 is the bundle's own)
#
# Environment (defaults in brackets): OUT [checkpoints: the bundle, whose teacher.safetensors teaches],
#   RUNS [runs/seeds: seed<N>/ run folders, logs, commands.tsv], DATA [../shared/data/cifar10/cifar10-jpeg.tar.xz],
#   BUNDLE [bundle: the presets' prefix], STUDENT_SECONDS [3600], PYTHON [python3], EXTRA (flags added to
#   every `advit train`, as in scripts/train_bundle.sh).
# One seed takes STUDENT_SECONDS plus start-up and evaluations (about 65 minutes on 2 cores): start it at the
# beginning of a session, with nothing heavy beside it. Run again, it goes on (finished seeds are kept,
# interrupted ones resumed).
set -euo pipefail
cd "$(dirname "$0")/.."
(( $# )) || { echo "usage: $0 SEED [SEED ...]" >&2; exit 2; }
OUT=${OUT:-checkpoints}
RUNS=${RUNS:-runs/seeds}
DATA=${DATA:-../shared/data/cifar10/cifar10-jpeg.tar.xz}
BUNDLE=${BUNDLE:-bundle}
STUDENT_SECONDS=${STUDENT_SECONDS:-3600}
PYTHON=${PYTHON:-python3}
read -r -a EXTRA_FLAGS <<< "${EXTRA:-}"
source scripts/run_lib.sh
for seed in "$@"; do
  [[ $seed =~ ^[1-9][0-9]*$ ]] || { echo "a further seed is a whole number other than 0 (the bundle's own), got $seed" >&2; exit 2; }
done
mkdir -p "$RUNS"

folders=()
for seed in "$@"; do
  train_students "seed$seed" "$RUNS/seed$seed" --teacher "$OUT/teacher.safetensors" --data "$DATA" \
    --preset "$BUNDLE-student" --time-budget "$STUDENT_SECONDS" --seed "$seed" "${EXTRA_FLAGS[@]}"
  folders+=("$RUNS/seed$seed")
done
"$PYTHON" -m advit seeds "${folders[@]}" --card "$OUT"
