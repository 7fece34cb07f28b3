#!/usr/bin/env bash
# Train a flow-head generator on one CUDA GPU from ../shared/media (synthetic + real corpus, held-out
# speakers kept out) within --minutes (8), and write the checkpoint, curves and acceptance figures to OUT.
#   scripts/train_on_gpu.sh OUT [--minutes 8] [--flow-steps 4] ...   (all options: --help)
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" scripts/train_on_gpu.py "$@"
