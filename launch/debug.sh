#!/usr/bin/env bash
# Set up (first run only) and run the single-node debug job: synthetic data -> shards ->
# Ray Train + DeepSpeed pretraining -> zero-shot evaluation, tracked in MLflow.
# Extra arguments go to `mmclip-dist debug` (e.g. train.max_steps=20 --workdir /tmp/dbg).
set -euo pipefail
cd "$(dirname "$0")/.."
./launch/install.sh
source launch/env.sh
exec .venv/bin/mmclip-dist debug "$@"
