#!/usr/bin/env bash
# Submit a pretraining job to a Ray cluster and follow it; exits with the job's status.
#   launch/submit.sh [--address http://127.0.0.1:8265] --config launch/configs/vindr_efficientnet_b2.yaml [overrides]
# The token of a cluster with Ray token auth comes from $RAY_AUTH_TOKEN (see docs/cluster.md).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
if [[ ! -x .venv/bin/mmclip-dist ]]; then
  echo "launch/submit.sh: .venv/bin/mmclip-dist not found; install the project first (launch/test.sh or pip install -e .)" >&2
  exit 2
fi
exec .venv/bin/mmclip-dist submit --working-dir "$repo" "$@"
