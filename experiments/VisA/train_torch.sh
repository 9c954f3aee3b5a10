#!/usr/bin/env bash
# Train: bash train_torch.sh NPROC [DEVICE_IDS] [--opts KEY=VALUE ...]   (works from any folder)
HERE=$(cd "$(dirname "$0")" && pwd)
exec bash "$HERE/../../tools/launch.sh" "$HERE/config.yaml" train "$@"
