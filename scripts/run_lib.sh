# Shell functions the training scripts share (sourced by scripts/train_bundle.sh and scripts/train_seeds.sh).
# They expect PYTHON and RUNS (where NAME.log and commands.tsv go) to be set.

seconds_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

finished() {  # run folder: true when its status says finished
  "$PYTHON" -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["state"] != "finished")' \
    "$1/status.json" 2> /dev/null
}

train() {  # name of the command (its log and commands.tsv line), then the `advit train` arguments
  local name=$1 line start wall
  shift
  local cmd=("$PYTHON" -m advit train "$@")
  printf -v line '%q ' "${cmd[@]}"
  echo "== $name: $line"
  start=$EPOCHREALTIME
  "${cmd[@]}" 2>&1 | tee -a "$RUNS/$name.log"
  wall=$(seconds_since "$start")
  printf '%s\t%s\t%s\n' "$name" "$wall" "$line" >> "$RUNS/commands.tsv"
  echo "== $name: ${wall}s wall"
}

train_students() {  # name, folder of the students' folders, then the flags of a fresh start
  # The students (STUDENTS if set, else the bundle's six of advit.results.bundle.STUDENTS) in one process on the same
  # batches: kept when all finished, resumed together when all have a last checkpoint, else started with the
  # flags given.
  local name=$1 parent=$2 run pending=0 resumable=1 students methods
  shift 2
  read -r -a students <<< "${STUDENTS:-$("$PYTHON" -c 'from advit.results.bundle import STUDENTS; print(*STUDENTS)')}"
  local folders=("${students[@]/#/$parent/}")
  for run in "${folders[@]}"; do
    finished "$run" || pending=1
    [[ -f $run/last.safetensors ]] || resumable=0
  done
  if (( pending == 0 )); then
    echo "== $name: finished earlier, kept"
  elif (( resumable == 1 )); then
    train "$name" --resume "${folders[@]}"
  else
    methods=$(IFS=,; echo "${students[*]}")
    train "$name" --out "$parent" --methods "$methods" "$@"
  fi
}
