#!/usr/bin/env bash
# The paper-scale ablation for one GPU (issue 18, item 4): full fine-tuning of the pretrained EfficientNet-Lite0
# at 224 px, rows none / random / selective over 3 seeds, sized for ~8 minutes on one H100 (--scale F shrinks
# or grows the training steps; --plan prints the sizing only). Writes bench_out/gpu_science/ablation.json like
# the CPU tables, and gpu_science.json with the phase wall times. Everything is in bench/gpu_science.py.
# Without a visible CUDA GPU it says so and exits 77 (skipped), having run nothing, unless --allow-cpu.
#
#   bash bench/gpu_science.sh [--scale 0.5] [--seeds 0,1,2] [--data ../shared/data] [-- extra trainer flags]
#   (from anywhere; PYTHON=... chooses the interpreter, default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/gpu_science.py "$@"
