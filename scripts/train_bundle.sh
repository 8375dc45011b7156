#!/usr/bin/env bash
# The checkpoint bundle (checkpoints/), trained from scratch with the project's own CLI:
#
#   1. a CIFAR-10 teacher (preset ${BUNDLE}-teacher) for TEACHER_SECONDS;
#   2. the students (preset ${BUNDLE}-student) by STUDENTS, all in ONE process (`advit train --methods`):
#      the same batches, augmentation and mixing for every student, and one teacher forward per batch
#      shared by all of them, for STUDENT_SECONDS at most;
#   3. `advit bundle` (--recipe BUNDLE: the card states that recipe's goals): fp16 weights of the teacher, vit, deit_hard and the best ADViT student (chosen
#      on held-out training images, never the test set), every run's evaluation and attention probe,
#      the model card (README.md), and the size check.
#
#   bash scripts/train_bundle.sh [OUT]       # OUT: the bundle folder (default checkpoints; checkpoints/quick for the
#                                            # quick recipe, whose bundle the shipped long one keeps there)
#
# Environment (defaults in brackets; relative paths are from the repository root):
#   OUT, RUNS [runs/bundle; ../runs/long-bundle for long-bundle: run folders, NAME.log of each command, commands.tsv],
#   DATA [../shared/data/cifar10/cifar10-jpeg.tar.xz], BUNDLE [bundle: the quick 2-core CPU recipe;
#   long-bundle: the long one, trained across sessions; gpu-bundle: the lent GPU's], TEACHER_SECONDS [2700;
#   none for long-bundle, whose presets count their length in steps], STUDENT_SECONDS [3600; none for
#   long-bundle], STUDENTS [the seven of advit.results.bundle.STUDENTS; long-bundle: vit deit_hard advit_l1 advit_kl advit_relevance], MAX_MB [80],
#   SWEEP [benchmarks/results/bundle-sweep-cpu.jsonl; long-bundle-probes-cpu.jsonl for long-bundle: the sweep.jsonl of
#   scripts/cpu_sweep.py behind the recipe, in the card, which cites the reasoning beside it (the same name, .md)],
#   EARLIER [none; checkpoints/quick for long-bundle: the quick bundle it replaces, kept whole in OUT/quick, its seeds and card kept],
#   PYTHON [python3], EXTRA: flags added to every `advit train`, e.g. a tiny CPU check:
#   EXTRA="--subset 256 --test-subset 128 --batch-size 64 --steps 2 --device cpu --model-arg depth=2"
#
# The default budgets fit the 120 minutes of the CPU bundle on 2 cores with start-up and evaluations.
# Run again, it goes on: finished runs are skipped, interrupted ones resume from their last checkpoints
# (useful where a session or one command may be cut short); while one is running (RUNS/.lock held), a
# second start says so and leaves it alone.
#
# The long bundle: hours of 2-core CPU, more than one session holds. Start it, or resume it, in the first
# minute of each session, with nothing heavy beside it (each run folder's sessions.json records every
# sitting's machine, steps and wall time; the card adds them up):
#   mkdir -p ../runs/long-bundle && BUNDLE=long-bundle nohup bash scripts/train_bundle.sh ../runs/long-bundle/export \
#     >> ../runs/long-bundle/nohup.log 2>&1 &
#
# On the lent GPU machine (no advit install needed: `python3 -m advit` runs from the repository root),
# with the CIFAR archive carried in .carry/ and the bundle written where the files come back:
#   BUNDLE=gpu-bundle ADVIT_CACHE=/tmp/advit-cache DATA=.carry/cifar10-jpeg.tar.xz \
#     bash scripts/train_bundle.sh $OUT/checkpoints
# RUNS stays in runs/bundle (ignored by git, so kept on a warm machine between two calls, for the
# resume; the teacher's last.safetensors with its optimiser state is too big to carry back and forth).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${BUNDLE:-bundle}
DATA=${DATA:-../shared/data/cifar10/cifar10-jpeg.tar.xz}
if [[ $BUNDLE == long-bundle ]]; then
  RUNS=${RUNS:-../runs/long-bundle}  # beside the work tree, which a new session may lay anew
  TEACHER_SECONDS=${TEACHER_SECONDS:-}
  STUDENT_SECONDS=${STUDENT_SECONDS:-}
  STUDENTS=${STUDENTS:-vit deit_hard advit_l1 advit_kl advit_relevance}
  OUT=${1:-${OUT:-checkpoints}}
  EARLIER=${EARLIER-checkpoints/quick}  # the quick bundle it replaces, kept whole in OUT/quick (advit bundle --earlier)
  SWEEP=${SWEEP:-benchmarks/results/long-bundle-probes-cpu.jsonl}  # the short runs that chose its teacher
else
  if [[ $BUNDLE == bundle ]]; then
    OUT=${1:-${OUT:-checkpoints/quick}}  # the quick bundle lives inside the shipped (long) one
  else
    OUT=${1:-${OUT:-checkpoints}}
  fi
  RUNS=${RUNS:-runs/bundle}
  TEACHER_SECONDS=${TEACHER_SECONDS:-2700}
  STUDENT_SECONDS=${STUDENT_SECONDS:-3600}
fi
MAX_MB=${MAX_MB:-80}
SWEEP=${SWEEP:-benchmarks/results/bundle-sweep-cpu.jsonl}
PYTHON=${PYTHON:-python3}
read -r -a EXTRA_FLAGS <<< "${EXTRA:-}"
source scripts/run_lib.sh
mkdir -p "$RUNS"
exec 9> "$RUNS/.lock"
flock -n 9 || { echo "== $RUNS is being trained by another process (its .lock is held): left to it"; exit 0; }
STARTED=$EPOCHREALTIME
teacher_budget=() student_budget=()
[[ -n $TEACHER_SECONDS ]] && teacher_budget=(--time-budget "$TEACHER_SECONDS")
[[ -n $STUDENT_SECONDS ]] && student_budget=(--time-budget "$STUDENT_SECONDS")

if finished "$RUNS/teacher"; then
  echo "== teacher: finished earlier, kept"
elif [[ -f $RUNS/teacher/last.safetensors ]]; then
  train teacher --resume "$RUNS/teacher"  # its saved config holds the flags
else
  train teacher --out "$RUNS/teacher" --data "$DATA" --preset "$BUNDLE-teacher" "${teacher_budget[@]}" \
    "${EXTRA_FLAGS[@]}"
fi

# A teacher stopped short (cancelled by SIGTERM at a session's end, which exits cleanly) is resumed by the next
# start, never taught from: the students wait for a finished teacher.
finished "$RUNS/teacher" || { echo "== teacher not finished: run this script again to resume it; the students wait"; exit 3; }
train_students students "$RUNS" --teacher "$RUNS/teacher/best.safetensors" --data "$DATA" \
  --preset "$BUNDLE-student" "${student_budget[@]}" "${EXTRA_FLAGS[@]}"

sweep=() earlier=()
[[ -f $SWEEP ]] && sweep=(--sweep "$SWEEP")
[[ -n ${EARLIER:-} ]] && earlier=(--earlier "$EARLIER")
"$PYTHON" -m advit bundle "$RUNS" --out "$OUT" --max-mb "$MAX_MB" --recipe "$BUNDLE" "${sweep[@]}" "${earlier[@]}"
echo "== all done in $(seconds_since "$STARTED")s wall; the bundle is in $OUT"
