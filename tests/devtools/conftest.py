"""Fixtures of the dev harness tests (mmclip_devtools): the local SeaweedFS S3 server."""

from mmclip_devtools.fixtures.s3 import s3_env, s3_prefix, s3_server  # noqa: F401
