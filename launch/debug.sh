#!/usr/bin/env bash
# Set up (first run only) and run the single-node debug job: synthetic data -> shards ->
# Ray Train + DeepSpeed pretraining -> zero-shot evaluation, tracked in MLflow.
# Extra arguments go to `mmclip-dist debug` (e.g. train.max_steps=20 --workdir /tmp/dbg).
set -euo pipefail
cd "$(dirname "$0")/.."
./launch/install.sh
export DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/mmclip-dist debug "$@"
