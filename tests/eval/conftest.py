"""Fixtures of the evaluation tests: one MM-CLIP pretrained through the real trainer, shared by the session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# --import-mode=importlib does not put test folders on sys.path; the builders are plain helpers.
sys.path.insert(0, str(Path(__file__).parent))

from eval_fixtures import Pretrained, pretrain  # noqa: E402


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Pretrained:
    """96 synthetic patients (a third of them test), 50 steps of MM-CLIP on Ray + DeepSpeed, exported."""
    return pretrain(tmp_path_factory.mktemp("eval-e2e"), seed=0)
