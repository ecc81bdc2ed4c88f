"""Shared fixtures of the model and loss tests: a tiny local BERT folder and a tiny MM-CLIP config.

Registered as a pytest plugin by ``tests/model/conftest.py`` and ``tests/losses/conftest.py``.
"""

from pathlib import Path

import pytest

from mmclip_dist.config import ModelConfig
from mmclip_dist.model.debug import build_debug_text_encoder


@pytest.fixture(scope="session")
def text_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_debug_text_encoder(tmp_path_factory.mktemp("bert") / "tiny-bert")


@pytest.fixture()
def tiny_cfg(text_folder: Path) -> ModelConfig:
    return ModelConfig(
        backbone="test_resnet",
        text_encoder=str(text_folder),
        embed_dim=16,
        roi_match_dim=16,
        roi_match_heads=2,
        roi_output_size=3,
        dropout=0.1,
    )
