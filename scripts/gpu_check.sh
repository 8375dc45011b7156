#!/usr/bin/env bash
# Checks of the training core on the lent GPU machine (torch 2.11, timm 1.0.29, no network).
#
#   1. the capture, loss and training tests on that machine's versions, with CUDA present;
#   2. a CIFAR-native teacher and two students (ADViT-L1, DeiT-hard) trained briefly in bf16,
#      for throughput and a first accuracy on the real CIFAR-10 archive;
#   3. the capture-vs-full-maps step benchmark at 224 (ViT-B/16 -> ViT-S/16).
#
# Usage there: bash scripts/gpu_check.sh (the CIFAR archive carried in .carry/); results in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
RUNS=/tmp/runs
SECONDS_TEACHER=${SECONDS_TEACHER:-60}
SECONDS_STUDENT=${SECONDS_STUDENT:-40}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 ADVIT_CACHE=/tmp/advit-cache
export ADVIT_CIFAR=$PWD/.carry/cifar10-jpeg.tar.xz
mkdir -p "$OUT" "$RUNS"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())" \
  | tee "$OUT/summary.txt"

python3 -m pytest -q -p no:cacheprovider tests/core/test_capture.py tests/core/test_losses.py tests/training/test_train.py \
  -k "${PYTEST_K:-not torchrun and not killed and not gpu_machines}" 2>&1 | tee "$OUT/pytest.log" | tail -n 5

train() {  # name, then advit train flags
  local name=$1; shift
  python3 -m advit train --data "$ADVIT_CIFAR" --out "$RUNS/$name" --log-every 50 "$@" 2>&1 | tail -n 3
  python3 - "$RUNS/$name" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
lines = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()]
train = [l for l in lines if l['event'] == 'train']
rates = sorted(l['images_per_s'] for l in train[1:]) or [0]
best = json.loads((run / 'best.eval.json').read_text())['top1']  # the checkpoint selected on validation
print(f"{run.name}: {train[-1]['step']} steps, {train[-1]['epoch']:.1f} epochs in {train[-1]['elapsed']:.0f}s, "
      f"median {rates[len(rates) // 2]:.0f} images/s, test top-1 {best:.2f}% (selected on validation)")
PY
}
train teacher --preset cifar32-small --method vit --time-budget "$SECONDS_TEACHER" --batch-size 512
TEACHER=$RUNS/teacher/best.safetensors
train advit_l1 --preset cifar32-tiny --method advit_l1 --teacher "$TEACHER" --time-budget "$SECONDS_STUDENT" --batch-size 512
train deit_hard --preset cifar32-tiny --method deit_hard --teacher "$TEACHER" --time-budget "$SECONDS_STUDENT" --batch-size 512

python3 benchmarks/capture_step.py ${BENCH_ARGS:---device cuda} --json "$OUT/capture_step.json" 2>&1 | tee "$OUT/capture_step.txt" | tail -n 15

tar czf "$OUT/runs.tgz" -C "$RUNS" --exclude='*.safetensors' --exclude='*.npz' .
