#!/usr/bin/env bash
# Build WebDataset shards from CSV file in the generic format of docs/shards.md.
#   shards/generic.sh INPUT OUTPUT [--config FILE] [--no-progress] [section.key=value ...]   (options first)
# OUTPUT is a folder or s3://bucket/prefix (endpoint: shards.s3_endpoint=URL or AWS_ENDPOINT_URL).
# Ids are hashed with a secret salt: export MMCLIP_ID_SALT (keep it the same for every rebuild).
# Paths in the CSV are relative to the CSV's folder.
# An interrupted build resumes where it stopped when run again with the same arguments.
exec "$(dirname "$0")/_build.sh" generic "$0" "$@"
