#!/usr/bin/env bash
# Further seeds of a bundle's students, for its Tables 1 and 2 over seeds (its README.md): the students it holds
# (by default the quick bundle's seven, kept in checkpoints/quick) with the settings and the number of steps it records
# (OUT/students.recipe.json, written by `advit bundle`: a preset may have changed since, and a time budget would
# give a slower CPU fewer steps), on the shipped teacher, the seed the only difference; then `advit seeds` adds
# their evaluations (never their weights) to the bundle and its card.
#
#   bash scripts/train_seeds.sh SEED [SEED ...]     # e.g. 1 2 (seed 0 is the bundle's own)
#   STUDENTS=advit_relevance bash scripts/train_seeds.sh 0 1 2   # a method the bundle lacks: seed 0 joins the
#                                                                 # bundle (weights too), seeds 1 2 its tables
#
# Environment (defaults in brackets): STUDENTS [those of advit.results.bundle.STUDENTS the bundle has evaluated],
#   OUT [checkpoints/quick: the bundle, whose teacher.safetensors teaches; checkpoints for the long bundle's five,
#   whose 10,530 steps take about three hours a seed on 2 cores],
#   RUNS [runs/seeds: seed<N>/ run folders, logs, commands.tsv], DATA [../shared/data/cifar10/cifar10-jpeg.tar.xz],
#   RECIPE [OUT/students.recipe.json], PYTHON [python3], EXTRA (flags added to every `advit train`, as in
#   scripts/train_bundle.sh).
# One seed of the quick bundle's 1991 steps takes about an hour on a 2-core EPYC with avx512_bf16 (0.55 steps/s
# for the six students together, evaluations included): start it at the beginning of a session, with nothing
# heavy beside it. Run again, it goes on (finished seeds are kept; interrupted ones resume where they stopped:
# SIGTERM saves the students' last checkpoints, a kill loses the steps since the last evaluation).
set -euo pipefail
cd "$(dirname "$0")/.."
(( $# )) || { echo "usage: $0 SEED [SEED ...]" >&2; exit 2; }
OUT=${OUT:-checkpoints/quick}
RUNS=${RUNS:-runs/seeds}
DATA=${DATA:-../shared/data/cifar10/cifar10-jpeg.tar.xz}
RECIPE=${RECIPE:-$OUT/students.recipe.json}
PYTHON=${PYTHON:-python3}
[[ -f $RECIPE ]] || { echo "$RECIPE not found: the bundle does not record its students' settings (advit bundle writes them)" >&2; exit 2; }
read -r -a EXTRA_FLAGS <<< "${EXTRA:-}"
source scripts/run_lib.sh
if [[ -n ${STUDENTS:-} ]]; then
  read -r -a students <<< "$STUDENTS"
else
  students=()
  for student in $("$PYTHON" -c 'from advit.results.bundle import STUDENTS; print(*STUDENTS)'); do
    [[ -f $OUT/$student.eval.json ]] && students+=("$student")
  done
  (( ${#students[@]} )) || { echo "$OUT has no evaluated student: give STUDENTS" >&2; exit 2; }
  STUDENTS="${students[*]}"  # what train_students (scripts/run_lib.sh) trains
fi
for seed in "$@"; do
  [[ $seed =~ ^[0-9]+$ ]] || { echo "a seed is a whole number, got $seed" >&2; exit 2; }
  if (( seed == 0 )); then  # the bundle's own: only for students it lacks, which then join it, weights too
    for student in "${students[@]}"; do
      [[ ! -f $OUT/$student.eval.json ]] || { echo "seed 0 is the bundle's own and it has $student: give STUDENTS the ones it lacks" >&2; exit 2; }
    done
  fi
done
mkdir -p "$RUNS"

folders=()
for seed in "$@"; do
  train_students "seed$seed" "$RUNS/seed$seed" --teacher "$OUT/teacher.safetensors" --data "$DATA" \
    --config "$RECIPE" --seed "$seed" "${EXTRA_FLAGS[@]}"
  folders+=("$RUNS/seed$seed")
done
"$PYTHON" -m advit seeds "${folders[@]}" --card "$OUT"
