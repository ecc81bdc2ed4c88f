"""Fixtures shared by the data tests; builders live in dicom_fixtures.py (importable by every test here)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

# --import-mode=importlib does not put test folders on sys.path; the builders are plain helpers.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def gradient_image() -> np.ndarray:
    """A 40x56 12-bit image with distinct values everywhere (catches transposes and off-by-ones)."""
    y, x = np.mgrid[0:40, 0:56]
    return ((y * 97 + x * 31) % 4096).astype(np.uint16)

# One SeaweedFS S3 server for every test under tests/data (a session fixture imported into each module
# would start one per module). Other folders import these from tests.data.s3_fixture.
from s3_fixture import s3_env, s3_prefix, s3_server  # noqa: E402,F401
