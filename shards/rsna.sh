#!/usr/bin/env bash
# Build WebDataset shards from RSNA root (train.csv, train_images/).
#   shards/rsna.sh INPUT OUTPUT [--config FILE] [--no-progress] [section.key=value ...]   (options first)
# OUTPUT is a folder or s3://bucket/prefix (endpoint: shards.s3_endpoint=URL or AWS_ENDPOINT_URL).
# Ids are hashed with a secret salt: export MMCLIP_ID_SALT (keep it the same for every rebuild).
# No official split: shards.test_fraction=0.1 (say) hashes that share of patients into 'test'.
# An interrupted build resumes where it stopped when run again with the same arguments.
exec "$(dirname "$0")/_build.sh" rsna "$0" "$@"
