#!/usr/bin/env bash
# Launch tools/train_val.py for one experiment; called by experiments/*/train_torch.sh and eval_torch.sh.
#   launch.sh CONFIG train|eval NPROC [DEVICE_IDS] [extra train_val.py args, e.g. --opts k=v]
# NPROC 1 runs one plain process (CPU or one GPU); NPROC > 1 uses torchrun (nccl on GPU, gloo on CPU).
# DEVICE_IDS (e.g. 0,1) is *exported* as CUDA_VISIBLE_DEVICES so that the workers see it.
set -euo pipefail
CONFIG=$1; MODE=$2; NPROC=${3:-1}; DEVICES=""
shift $(( $# < 3 ? $# : 3 ))
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then DEVICES=$1; shift; fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$DEVICES" ]; then export CUDA_VISIBLE_DEVICES="$DEVICES"; fi
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
EXTRA=()
[ "$MODE" = eval ] && EXTRA+=(-e)
if [ "$NPROC" -le 1 ]; then
  exec "$PY" "$ROOT/tools/train_val.py" --config "$CONFIG" "${EXTRA[@]}" "$@"
fi
exec "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
  "$ROOT/tools/train_val.py" --config "$CONFIG" "${EXTRA[@]}" "$@"
