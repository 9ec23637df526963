#!/usr/bin/env bash
# Create .venv-latest: Python 3.13 with the newest jax/flax/optax/orbax and the test deps (requirements-dev.txt
# without torch, resolved to the newest releases), for the second CI leg (`pytest -m "not torch and not export and not slow"`). No
# torch/torchvision/timm here: the tests that need them are marked `torch` (tests/conftest.py) and run in the
# Python 3.11 leg only.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '[setup_latest %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# Python 3.13: PYTHON313 if set, else pyenv's newest 3.13.x, else python3.13 on PATH (a pyenv shim counts
# only if it runs: a shim for a version pyenv has not activated fails).
find_python() {
    local candidates=()
    [[ -n "${PYTHON313:-}" ]] && candidates+=("$PYTHON313")
    if command -v pyenv >/dev/null 2>&1; then
        local root; root="$(pyenv root 2>/dev/null || true)"
        if [[ -n "$root" ]]; then
            local v
            for v in $(ls -d "$root"/versions/3.13* 2>/dev/null | sort -V -r); do candidates+=("$v/bin/python3.13"); done
        fi
    fi
    local v
    for v in $(ls -d "$HOME"/.pyenv/versions/3.13* 2>/dev/null | sort -V -r); do candidates+=("$v/bin/python3.13"); done
    command -v python3.13 >/dev/null 2>&1 && candidates+=("$(command -v python3.13)")
    local c
    for c in "${candidates[@]}"; do
        if [[ -x "$c" ]] && "$c" -c 'import sys, venv; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1; then
            echo "$c"; return 0
        fi
    done
    return 1
}

step "looking for Python 3.13"
if ! PY="$(find_python)"; then
    echo "setup_latest.sh: no working Python 3.13 found (tried \$PYTHON313, pyenv's versions/3.13*, python3.13 on" \
         "PATH). Install one (e.g. 'pyenv install 3.13') or set PYTHON313=/path/to/python3.13." >&2
    exit 1
fi
step "using $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"

step "creating .venv-latest"
"$PY" -m venv .venv-latest
VPY=.venv-latest/bin/python
"$VPY" -m pip install -q -U pip

step "installing the newest jax/flax/optax/orbax, training and test deps (requirements-dev.txt without torch)"
# requirements-dev.txt (it includes requirements-train.txt) less its torch pin: torch 2.13 is a local 3.11 file.
REQS=.venv-latest/requirements-latest.txt
grep -v -E '^[[:space:]]*torch([[:space:]]|[=<>!~;]|$)' requirements-dev.txt \
    | sed -E "s#^-r[[:space:]]+#-r $PWD/#" > "$REQS"
"$VPY" -m pip install -q -U -r "$REQS"

step "installing flax-mobilenet (editable, --no-deps)"
"$VPY" -m pip install -q --no-deps -e .

"$VPY" -c "import sys, jax, jaxlib, flax, optax, orbax.checkpoint as oc; \
print('[setup_latest] python', sys.version.split()[0], 'jax', jax.__version__, 'jaxlib', jaxlib.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'orbax-checkpoint', oc.__version__)"
step "done"
