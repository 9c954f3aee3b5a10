#!/usr/bin/env bash
# Evaluate saver.load_path: bash eval_torch.sh NPROC [DEVICE_IDS] [--opts KEY=VALUE ...]
HERE=$(cd "$(dirname "$0")" && pwd)
exec bash "$HERE/../../tools/launch.sh" "$HERE/config.yaml" eval "$@"
