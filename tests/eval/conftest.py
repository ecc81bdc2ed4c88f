"""Fixtures of the evaluation tests: one MM-CLIP pretrained through the real trainer, shared by the session."""

from __future__ import annotations

import pytest

from mmclip_devtools.fixtures.pretrained import Pretrained, pretrain  # noqa: E402


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Pretrained:
    """96 synthetic patients (a third of them test), 50 steps of MM-CLIP on Ray + DeepSpeed, exported."""
    return pretrain(tmp_path_factory.mktemp("eval-e2e"), seed=0)
