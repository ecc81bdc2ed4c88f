# Environment shared by launch/debug.sh and launch/test.sh (sourced; run from the repository root).
# CPU-only machine: DeepSpeed's CPU accelerator, no model hub, no usage stats.
export DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0
# DeepSpeed JIT-compiles one CPU comm op on first use; one cache per checkout, so two checkouts (each with
# its own .venv) never rebuild each other's copy while a job of the other is loading it.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions}"
