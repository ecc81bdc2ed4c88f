#!/usr/bin/env bash
# GPU smoke benchmark (< 3 min): MM-CLIP train steps, EfficientNet-B2 760x480 bf16, vs pure timm, per GPU.
# Needs only torch(+torchvision), timm and transformers in the Python it finds; no data, no downloads.
#   bash bench/gpu_smoke.sh [--micro-batch 8 --steps 10]      (PYTHON=... to pick the interpreter)
#   bash bench/gpu_smoke.sh --cpu-dry-run                      (tiny sizes on CPU: checks the script only)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
"$PYTHON" -c 'import torch, timm, transformers; print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), timm {timm.__version__}, transformers {transformers.__version__}")'
exec timeout 170 "$PYTHON" bench/gpu_smoke.py "$@"
