#!/usr/bin/env bash
# Build WebDataset shards from CBIS-DDSM root (the four case CSVs and the DICOM folders).
#   shards/cbis.sh INPUT OUTPUT [--config FILE] [--no-progress] [section.key=value ...]   (options first)
# OUTPUT is a folder or s3://bucket/prefix (endpoint: shards.s3_endpoint=URL or AWS_ENDPOINT_URL).
# Ids are hashed with a secret salt: export MMCLIP_ID_SALT (keep it the same for every rebuild).
# ROI masks are matched to images by size and stored as cc_mask.png / mlo_mask.png.
# An interrupted build resumes where it stopped when run again with the same arguments.
exec "$(dirname "$0")/_build.sh" cbis "$0" "$@"
