"""Fixtures shared by the data tests; builders live in mmclip_devtools/fixtures/dicoms.py."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def gradient_image() -> np.ndarray:
    """A 40x56 12-bit image with distinct values everywhere (catches transposes and off-by-ones)."""
    y, x = np.mgrid[0:40, 0:56]
    return ((y * 97 + x * 31) % 4096).astype(np.uint16)


# One SeaweedFS S3 server for every test under tests/data (a session fixture imported into each module
# would start one per module). Other folders import these from tests.data.s3_fixture.
from mmclip_devtools.fixtures.s3 import s3_env, s3_prefix, s3_server  # noqa: E402,F401
