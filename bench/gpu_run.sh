#!/usr/bin/env bash
# One command on a GPU machine with nothing but this repository: install, synthetic data, shards, a local
# BERT-base-shaped text encoder (no hub), preflight, `mmclip-dist train` (one GPU worker per GPU, bf16, the
# EfficientNet-B2 paper preset with steps and data reduced), zero-shot eval, and bench/gpu_smoke.py's pure
# timm comparison. Prints samples/s per GPU, peak GPU memory and the MM-CLIP/timm step-time ratio, and
# writes them to <workdir>/results.json. Target: < 8 min on one GPU.
#
#   bash bench/gpu_run.sh [--steps 30] [--workdir DIR] [--no-install]
#   bash bench/gpu_run.sh --cpu-dry-run [--workdir DIR]   # the same flow, tiny, on CPU (tested in CI)
#
# PYTHON=... picks the interpreter when the venv is not used (--no-install or --cpu-dry-run).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

DRY=0
INSTALL=1
STEPS=30
WORK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-dry-run) DRY=1; INSTALL=0 ;;
    --no-install) INSTALL=0 ;;
    --steps) STEPS=$2; shift ;;
    --workdir) WORK=$2; shift ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
WORK=${WORK:-$REPO/bench-results/gpu-run-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
PRESET=launch/configs/vindr_efficientnet_b2.yaml
started=$(date +%s)
stage() { echo "[gpu_run $(( $(date +%s) - started ))s] $*"; }

if [ "$INSTALL" = 1 ]; then
  stage "install (./launch/install.sh)"
  ./launch/install.sh
  PY=$REPO/.venv/bin/python
else
  PY=${PYTHON:-$(command -v python3 || command -v python)}
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
# A throw-away id salt for the synthetic bench data (a salt is a secret: environment, never a CLI override).
export MMCLIP_ID_SALT=${MMCLIP_ID_SALT:-gpu-run-bench-salt-$(date -u +%s)}
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$REPO/.venv/torch_extensions}
cli() { "$PY" -m mmclip_dist.cli.main "$@"; }

if [ "$DRY" = 1 ]; then
  export DS_ACCELERATOR=cpu
  NGPU=0
  WORKERS=2
  STEPS=2
  SIZE="[64, 48]"
  # The preset with sizes scaled down: tiny backbone and BERT, 64x48 images, 2 CPU workers; still bf16.
  OVERRIDES=(
    synthetic.num_patients=16 synthetic.height=256 synthetic.width=192
    synthetic.text_hidden=32 synthetic.text_layers=1 synthetic.text_vocab=300
    shards.shard_max_samples=6 shards.processes=1
    data.loader_workers=0 data.shuffle_buffer=8 data.max_text_len=32
    model.backbone=test_efficientnet model.embed_dim=16 model.roi_output_size=2
    model.roi_match_dim=16 model.roi_match_heads=2
    train.use_gpu=false train.cpus_per_worker=1 train.micro_batch=2 "train.global_batch=8"
    eval.batch_size=8 eval.bootstrap=20
  )
  SMOKE_ARGS=(--cpu-dry-run)
else
  NGPU=$(nvidia-smi -L | grep -c '^GPU')
  [ "$NGPU" -ge 1 ] || { echo "no GPU found by nvidia-smi; use --cpu-dry-run on CPU" >&2; exit 1; }
  WORKERS=$NGPU
  SIZE="[760, 480]"
  CPUS=$(( ($(nproc) - 2) / NGPU )); CPUS=$(( CPUS < 1 ? 1 : CPUS > 8 ? 8 : CPUS ))
  LOADERS=$(( CPUS > 1 ? CPUS - 1 : 1 ))
  # The preset as is (bf16, ZeRO-1, EfficientNet-B2 760x480, micro-batch 8, loss, optimiser) except: random
  # init (below: no hub), a random BERT-base (Bio_ClinicalBERT's shape) built locally, 2 micro-batches per GPU per
  # step (global batch 16 per GPU; the feature cache path), steps and data reduced.
  OVERRIDES=(
    synthetic.num_patients=$(( 120 * NGPU )) synthetic.height=1520 synthetic.width=960
    synthetic.text_hidden=768 synthetic.text_layers=12
    shards.shard_max_samples=12 shards.processes=$(( $(nproc) > 2 ? $(nproc) - 1 : 1 ))
    data.loader_workers=$LOADERS data.shuffle_buffer=64 data.epoch_samples=0
    train.use_gpu=true train.cpus_per_worker=$CPUS train.micro_batch=8 "train.global_batch=$(( 16 * NGPU ))"
    eval.batch_size=16 eval.bootstrap=200
  )
  SMOKE_ARGS=()
fi
OVERRIDES+=(
  "shards.image_size=$SIZE" "data.image_size=$SIZE"
  shards.input=$WORK/vindr shards.output=$WORK/shards
  data.train_shards=$WORK/shards data.eval_shards=$WORK/shards
  model.text_encoder=$WORK/text_encoder model.tokenizer= model.backbone_weights=
  train.num_workers=$WORKERS train.max_steps=$STEPS train.warmup_steps=$(( STEPS < 5 ? 1 : 5 ))
  train.checkpoint_every=0 train.keep_checkpoints=1 train.max_failures=0
  train.storage_path=$WORK/runs train.export_dir=$WORK/model train.run_name=gpu-run
  tracking.tracking_uri=sqlite:///$WORK/mlflow.db tracking.experiment=gpu-run
)
printf '%s\n' "${OVERRIDES[@]}" > "$WORK/overrides.txt"

stage "synthetic VinDr-format data"
[ -d "$WORK/vindr" ] || cli synthetic --out "$WORK/vindr" --config $PRESET "${OVERRIDES[@]}" > "$WORK/synthetic.json"
stage "shards"
cli shards build --no-progress --config $PRESET "${OVERRIDES[@]}"
stage "text encoder (WordPiece on the training reports + randomly initialised BERT, local folder)"
"$PY" - "$PRESET" "${OVERRIDES[@]}" <<'EOF'
import sys
from pathlib import Path

from mmclip_dist.config import load_config
from mmclip_dist.data.stream.loader import list_shards
from mmclip_dist.model.tokenizer import build_text_encoder_folder, train_wordpiece_tokenizer
from mmclip_dist.workflows.debug_run import training_reports

cfg = load_config(sys.argv[1], sys.argv[2:])
syn, folder = cfg.synthetic, Path(cfg.model.text_encoder)
shards = [Path(p) for p in list_shards(cfg.data.train_shards, split=cfg.data.train_split)]
tokenizer = train_wordpiece_tokenizer(training_reports(shards), folder, vocab_size=syn.text_vocab)
build_text_encoder_folder(folder, tokenizer, hidden_size=syn.text_hidden, layers=syn.text_layers,
                          heads=max(1, syn.text_hidden // 64))
print(f"text encoder: hidden {syn.text_hidden}, {syn.text_layers} layers in {folder}")
EOF
stage "preflight"
cli preflight --config $PRESET "${OVERRIDES[@]}" | tee "$WORK/preflight.txt"

stage "train: $WORKERS worker(s), $STEPS steps, bf16"
MONITOR=""
if [ "$DRY" = 0 ]; then
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 500 > "$WORK/gpu_memory.csv" &
  MONITOR=$!
fi
train_start=$(date +%s)
set +e
cli train --config $PRESET "${OVERRIDES[@]}" > "$WORK/train.log" 2>&1
train_rc=$?
set -e
grep -E "^MLflow run" "$WORK/train.log" || true
train_end=$(date +%s)
[ -n "$MONITOR" ] && kill "$MONITOR" 2>/dev/null || true
[ "$train_rc" = 0 ] || { tail -50 "$WORK/train.log"; echo "training failed (log: $WORK/train.log)" >&2; exit 1; }

stage "zero-shot eval of the exported model"
cli eval --model "$WORK/model" --mode zeroshot --no-mlflow --config $PRESET "${OVERRIDES[@]}" | tee "$WORK/eval.txt"

stage "pure timm comparison (bench/gpu_smoke.py)"
"$PY" bench/gpu_smoke.py "${SMOKE_ARGS[@]}" | tee "$WORK/gpu_smoke.txt"

stage "results"
"$PY" bench/gpu_run_report.py --workdir "$WORK" --gpus "$NGPU" --workers "$WORKERS" \
  --train-seconds $(( train_end - train_start )) --total-seconds $(( $(date +%s) - started ))
