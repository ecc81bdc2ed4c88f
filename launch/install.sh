#!/usr/bin/env bash
# Create .venv (if missing) and install mmclip-dist with its test extras. Idempotent and fast when
# nothing changed: a stamp holding the hash of pyproject.toml skips the pip step.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# The tested CPU/CUDA pair; clusters may pin another (TORCH_SPEC="torch==2.6.0 torchvision==0.21.0").
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 needed"'
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.mmclip-install-stamp
want=$(cat pyproject.toml launch/install.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip wheel setuptools
if ! .venv/bin/python -c 'import torch, torchvision' 2>/dev/null; then
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install -q $TORCH_SPEC
fi
# DS_BUILD_OPS=0: DeepSpeed compiles the ops it needs at first use instead of at install time.
DS_BUILD_OPS=0 .venv/bin/python -m pip install -q -e '.[dev]'
echo "$want" > "$stamp"
