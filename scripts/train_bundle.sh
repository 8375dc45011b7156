#!/usr/bin/env bash
# The checkpoint bundle (checkpoints/), trained from scratch with the project's own CLI:
#
#   1. a CIFAR-10 teacher, vit_small_patch4_32 (preset bundle-teacher), for TEACHER_SECONDS;
#   2. vit_tiny_patch4_32 students (preset bundle-student), all for STUDENT_EPOCHS epochs, by
#      vit, deit_hard, advit_l1, advit_l2, advit_kl, advit_kl_paper: the most wanted first, so a
#      session cut short keeps those;
#   3. `advit bundle`: fp16 weights of the teacher, vit, deit_hard and the best ADViT student, every
#      run's evaluation, the model card (README.md), and the size check.
#
#   bash scripts/train_bundle.sh [OUT]       # OUT: the bundle folder (default checkpoints)
#
# Environment (defaults in brackets; relative paths are from the repository root):
#   OUT, RUNS [runs/bundle: run folders, NAME.log of each command, commands.tsv],
#   DATA [../shared/data/cifar10/cifar10-jpeg.tar.xz], TEACHER_SECONDS [330],
#   STUDENT_EPOCHS [10: the same length for every student], STUDENT_SECONDS [60: only a cap; a
#   student that hits it trains fewer steps than the others, which the card's steps column shows],
#   PARALLEL [1: students trained at once], MAX_MB [80], PYTHON [python3],
#   EXTRA: flags added to every `advit train`, e.g. a tiny CPU check:
#   EXTRA="--subset 256 --test-subset 128 --batch-size 64 --steps 2 --device cpu --model-arg depth=2"
#
# Run again, it goes on: finished runs are skipped, an interrupted one resumes from its last checkpoint
# (useful where one command may run for 10 minutes at most).
#
# On the lent GPU machine (no advit install needed: `python3 -m advit` runs from the repository root),
# with the CIFAR archive carried in .carry/ and the bundle written where the files come back:
#   ADVIT_CACHE=/tmp/advit-cache DATA=.carry/cifar10-jpeg.tar.xz bash scripts/train_bundle.sh $OUT/checkpoints
# RUNS stays in runs/bundle (ignored by git, so kept on a warm machine between two calls, for the
# resume; the teacher's last.safetensors with its optimiser state is too big to carry back and forth).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-checkpoints}}
RUNS=${RUNS:-runs/bundle}
DATA=${DATA:-../shared/data/cifar10/cifar10-jpeg.tar.xz}
TEACHER_SECONDS=${TEACHER_SECONDS:-330}
STUDENT_EPOCHS=${STUDENT_EPOCHS:-10}
STUDENT_SECONDS=${STUDENT_SECONDS:-60}
MAX_MB=${MAX_MB:-80}
PYTHON=${PYTHON:-python3}
PARALLEL=${PARALLEL:-1}
read -r -a EXTRA_FLAGS <<< "${EXTRA:-}"
mkdir -p "$RUNS"
STARTED=$EPOCHREALTIME

seconds_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

train() {  # run name, then `advit train` flags
  local name=$1 run=$RUNS/$1
  shift
  if "$PYTHON" -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["state"] != "finished")' \
      "$run/status.json" 2> /dev/null; then
    echo "== $name: finished earlier, kept"
    return
  fi
  local cmd=("$PYTHON" -m advit train --out "$run" --data "$DATA" "$@" "${EXTRA_FLAGS[@]}")
  if [[ -f $run/last.safetensors ]]; then
    cmd=("$PYTHON" -m advit train --resume "$run")  # its saved config holds the flags
  fi
  local line start wall
  printf -v line '%q ' "${cmd[@]}"
  echo "== $name: $line"
  start=$EPOCHREALTIME
  "${cmd[@]}" 2>&1 | tee -a "$RUNS/$name.log"
  wall=$(seconds_since "$start")
  printf '%s\t%s\t%s\n' "$name" "$wall" "$line" >> "$RUNS/commands.tsv"
  echo "== $name: ${wall}s wall"
}

train teacher --preset bundle-teacher --time-budget "$TEACHER_SECONDS"
# The students, PARALLEL at a time on the one device: a ViT-Tiny step leaves a big GPU mostly idle
# (a DeiT student step ran at about 7% of an H200's bf16 rate: 11.7k images/s at 5 GFLOP an image),
# so several may share it. Each keeps its fixed number of steps; only the wall time changes (raise
# STUDENT_SECONDS with PARALLEL). Not yet tried on a GPU.
read -r -a STUDENTS <<< "$("$PYTHON" -c 'from advit.bundle import STUDENTS; print(*STUDENTS)')"
for ((first = 0; first < ${#STUDENTS[@]}; first += PARALLEL)); do
  pids=()
  for method in "${STUDENTS[@]:first:PARALLEL}"; do
    teacher=()
    [[ $method == vit ]] || teacher=(--teacher "$RUNS/teacher/best.safetensors")
    train "$method" --preset bundle-student --method "$method" "${teacher[@]}" \
      --epochs "$STUDENT_EPOCHS" --time-budget "$STUDENT_SECONDS" &
    pids+=($!)
  done
  failed=0
  for pid in "${pids[@]}"; do
    wait "$pid" || failed=1  # the others of the group finish first, none is left running
  done
  (( failed == 0 )) || { echo "== a student failed: see its log in $RUNS" >&2; exit 1; }
done

"$PYTHON" -m advit bundle "$RUNS" --out "$OUT" --max-mb "$MAX_MB"
echo "== all done in $(seconds_since "$STARTED")s wall; the bundle is in $OUT"
