#!/usr/bin/env bash
# The speed issue's GPU check, for a machine with a CUDA GPU (the CPU-only machines that wrote
# docs/PERFORMANCE.md could not run it). One command, from any directory:
#
#     bash tools/gpu_check.sh [OUT_DIR]          # default OUT_DIR: $OUT, else ./gpu_check_out
#
# 1. tools/benchmark.py train on cuda at batch 8: fp32, then --amp (bf16 autocast); with
#    GPU_CHECK_COMPILE=1 also --amp --compile (inductor compiles for minutes first);
# 2. with 2+ GPUs: 2 epochs of tools/train_val.py under torchrun on 2 GPUs (nccl) on synthetic data;
# 3. prints the step time at batch 8 and the projected wall time of the 1000-epoch MVTec-AD recipe
#    (1000 x 3,629 images x ms/img + the one-off cache fill) for each run.
# Each run's markdown section and log land in OUT_DIR; the exit status is non-zero if any step failed
# (a benchmark also fails when its speed-up is below 2x).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
OUT_DIR=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd) || exit 2
export HF_HUB_OFFLINE=1
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device')" || exit 2
failed=()

bench() {  # bench NAME [extra benchmark options...]
  local name=$1; shift
  echo "== benchmark train on cuda, batch 8, $name"
  "$PY" tools/benchmark.py train --device cuda --batch 8 --images 256 --warmup 5 "$@" \
    --doc "$OUT_DIR/train_$name.md" 2>&1 | tee "$OUT_DIR/train_$name.log" || failed+=("benchmark $name")
}

bench fp32
bench amp --amp
[ "${GPU_CHECK_COMPILE:-0}" = 1 ] && bench amp_compile --amp --compile

ngpu=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$ngpu" -ge 2 ]; then
  echo "== 2-GPU nccl training (torchrun), 2 epochs on synthetic data"
  data="$OUT_DIR/ddp_data" exp="$OUT_DIR/ddp"
  "$PY" -c "import sys; from pathlib import Path; sys.path.insert(0, '.')
from utils.bench_train import write_synthetic_mvtec
write_synthetic_mvtec(Path('$data'), 64, 16, 224)" || failed+=("ddp data")
  "$PY" -m torch.distributed.run --nproc_per_node=2 tools/train_val.py \
    --config experiments/MVTec-AD/config.yaml --opts \
    "dataset.image_reader.kwargs.image_dir=$data" "dataset.train.meta_file=$data/train.json" \
    "dataset.test.meta_file=$data/test.json" net.backbone.kwargs.pretrained=False \
    net.reconstruction.kwargs.save_recon=False trainer.max_epoch=2 trainer.val_freq_epoch=1 \
    "saver.save_dir=$exp/checkpoints" "saver.log_dir=$exp/log" "evaluator.save_dir=$exp/eval" \
    "evaluator.vis_compound.save_dir=$exp/vis" 2>&1 | tee "$OUT_DIR/ddp.log" || failed+=("ddp run")
  grep -q "2 process(es), device cuda" "$exp/log/train.log" || failed+=("ddp log: 2 processes on cuda")
else
  echo "== 1 GPU: the 2-GPU nccl path is skipped"
fi

echo "== summary (step time at batch 8 = ms/img x 8; projection for one GPU)"
grep -h "^(a) original" "$OUT_DIR"/train_*.log
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all GPU checks passed; markdown sections in $OUT_DIR/train_*.md"
