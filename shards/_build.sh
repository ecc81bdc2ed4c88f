#!/usr/bin/env bash
# Shared body of shards/<dataset>.sh: _build.sh DATASET CALLER INPUT OUTPUT [options] [overrides]
# (CALLER is the per-dataset script, whose header comment is printed as its usage).
set -euo pipefail
dataset=$1 caller=$2
shift 2
if [ $# -lt 2 ]; then
  awk 'NR > 1 && !/^#/ { exit } NR > 1' "$caller" >&2  # the caller's header comment is its usage
  exit 2
fi
input=$1 output=$2
shift 2
cd "$(dirname "$0")/.."
exec .venv/bin/mmclip-dist shards build "$@" "shards.dataset=$dataset" "shards.input=$input" "shards.output=$output"
