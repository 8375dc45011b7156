#!/usr/bin/env bash
# The performance figures on the lent GPU machine (torch 2.11, timm 1.0.29, no network), in
# priority order, so that a timeout still returns the most important ones (about 6 minutes by estimate):
#
#   1. ADViT step vs DeiT step and MFU, the CIFAR-native bundle pair at 32x32, batch 512;
#   2. the same for ViT-B/16 -> ViT-S/16 at 224, batch 128;
#   3. our capture vs full attention maps, ViT-B/16 -> ViT-S/16 at 224, batch 64;
#   4. step time and peak memory against batch size and token count (32/4, 224/16, 384/16);
#   5. step 1 with both forwards under torch.compile.
#
# Usage there: bash scripts/gpu_bench.sh (results in $OUT). On a CPU, at tiny scale:
#   OUT=/tmp/bench DEVICE=cpu QUICK="--repeats 1 --warmup 0" CIFAR_BATCH=4 VIT_BATCH=2 FULL_BATCH=2 \
#   SCALING="--batch-sizes 1 --repeats 1 --warmup 0" bash scripts/gpu_bench.sh
set -uo pipefail  # a failing part does not stop the others
OUT=${OUT:-/tmp/gpu-bench}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p "$OUT"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" | tee "$OUT/summary.txt"

part() {  # name, then the benchmark and its flags
  local name=$1; shift
  echo "== $name" | tee -a "$OUT/summary.txt"
  python3 "$@" --json "$OUT/$name.json" > "$OUT/$name.txt" 2>&1
  echo "exit $?" >> "$OUT/$name.txt"
  grep -v '^running\|^[0-9]*px batch' "$OUT/$name.txt" | tee -a "$OUT/summary.txt"
}
part step-cifar32 benchmarks/capture_step.py --device "$DEVICE" --pair cifar32 --variants deit,ours,ours_kl \
  ${CIFAR_BATCH:+--batch-size $CIFAR_BATCH} $QUICK
part step-vit224 benchmarks/capture_step.py --device "$DEVICE" --pair vit224 --variants deit,ours,ours_kl \
  --batch-size "${VIT_BATCH:-128}" $QUICK
part full-vit224 benchmarks/capture_step.py --device "$DEVICE" --pair vit224 \
  --variants ours,full,forward,forward_capture --batch-size "${FULL_BATCH:-64}" $QUICK
part scaling benchmarks/capture_scaling.py --device "$DEVICE" ${SCALING:---batch-sizes 32,128}
part step-cifar32-compiled benchmarks/capture_step.py --device "$DEVICE" --pair cifar32 --variants deit,ours \
  --compile ${CIFAR_BATCH:+--batch-size $CIFAR_BATCH} $QUICK
