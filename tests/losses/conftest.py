"""Fixtures for the losses tests: a tiny local BERT folder and a tiny MM-CLIP config (shared with the model tests)."""

from mmclip_devtools.fixtures.models import text_folder, tiny_cfg  # noqa: F401  (pytest fixtures)
