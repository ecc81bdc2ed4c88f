#!/usr/bin/env bash
# Build WebDataset shards from VinDr-Mammo root (breast-level_annotations.csv, finding_annotations.csv, images/).
#   shards/vindr.sh INPUT OUTPUT [--config FILE] [--no-progress] [section.key=value ...]   (options first)
# OUTPUT is a folder or s3://bucket/prefix (endpoint: shards.s3_endpoint=URL or AWS_ENDPOINT_URL).
# Ids are hashed with a secret salt: export MMCLIP_ID_SALT (keep it the same for every rebuild).
# Labels are a BI-RADS proxy (shards.birads_malignant_min / birads_benign_max), stated in every sample.
# An interrupted build resumes where it stopped when run again with the same arguments.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,8p' "$0" >&2
  exit 2
fi
input=$1 output=$2
shift 2
cd "$(dirname "$0")/.."
exec .venv/bin/mmclip-dist shards build "$@" shards.dataset=vindr "shards.input=$input" "shards.output=$output"
