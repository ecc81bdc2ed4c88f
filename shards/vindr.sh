#!/usr/bin/env bash
# Build WebDataset shards from VinDr-Mammo root (breast-level_annotations.csv, finding_annotations.csv, images/).
#   shards/vindr.sh INPUT OUTPUT [--config FILE] [--no-progress] [section.key=value ...]   (options first)
# OUTPUT is a folder or s3://bucket/prefix (endpoint: shards.s3_endpoint=URL or AWS_ENDPOINT_URL).
# Ids are hashed with a secret salt: export MMCLIP_ID_SALT (keep it the same for every rebuild).
# Labels are a BI-RADS proxy (shards.birads_malignant_min / birads_benign_max), stated in every sample.
# An interrupted build resumes where it stopped when run again with the same arguments.
exec "$(dirname "$0")/_build.sh" vindr "$0" "$@"
