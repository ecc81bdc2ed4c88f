"""MMCLIP: batch -> MMCLIPOutput contract, per-modality encoders, portable export."""

import json
from pathlib import Path

import pytest
import torch

from mmclip_devtools.toy_models import random_batch
from mmclip_dist.config import DataConfig, ModelConfig
from mmclip_dist.model import MMCLIP


def test_forward_follows_the_batch_contract(tiny_cfg: ModelConfig) -> None:
    model = MMCLIP.from_config(tiny_cfg)
    batch = random_batch(3, (64, 48), max_rois=4, text_len=10, valid_rois=[[1, 0], [4, 2], [0, 0]])
    out = model(batch)
    assert out.image_embed.shape == (3, 2, 16) and out.text_embed.shape == (3, 2, 16)
    assert out.roi_feats.shape == (3, 2, 4, 16) and out.roi_valid.shape == (3, 2, 4)
    assert out.text_tokens.shape == (3, 2, 10, 16) and out.text_mask.shape == (3, 2, 10)
    assert torch.allclose(out.image_embed.norm(dim=-1), torch.ones(3, 2))
    assert torch.allclose(out.text_embed.norm(dim=-1), torch.ones(3, 2))
    assert torch.equal(out.roi_valid, batch["box_valid"])
    assert torch.equal(out.text_mask, batch["attention_mask"].bool())
    assert torch.all(out.roi_feats[~out.roi_valid] == 0) and torch.all(out.roi_feats[out.roi_valid].abs().sum(-1) > 0)


def test_encoders_match_forward(tiny_cfg: ModelConfig) -> None:
    model = MMCLIP.from_config(tiny_cfg).eval()
    batch = random_batch(2, (64, 48), max_rois=2, text_len=8)
    with torch.no_grad():
        out = model(batch)
        img = model.encode_image(batch["images"], batch["masks"], batch["boxes"], batch["box_valid"])
        txt = model.encode_text(batch["input_ids"], batch["attention_mask"])
        # Zero-shot prompts: [P, L] ids, no views.
        prompts = model.encode_text(batch["input_ids"][:, 0], batch["attention_mask"][:, 0])
        # Eval images without boxes: masks default to zero, no RoIs.
        plain = model.encode_image(batch["images"][:, 0])
    assert torch.allclose(img.image_embed, out.image_embed, atol=1e-6) and txt.image_embed is None
    assert torch.allclose(txt.text_embed, out.text_embed, atol=1e-6) and img.text_embed is None
    assert torch.allclose(prompts.text_embed, out.text_embed[:, 0], atol=1e-5)
    assert plain.image_embed.shape == (2, 16) and plain.roi_feats.shape == (2, 0, 16)


def test_missing_batch_key_is_a_clear_error(tiny_cfg: ModelConfig) -> None:
    model = MMCLIP.from_config(tiny_cfg)
    batch = random_batch(1)
    del batch["masks"]
    with pytest.raises(KeyError, match="masks"):
        model(batch)


def test_save_and_load_pretrained_round_trip(tiny_cfg: ModelConfig, tmp_path: Path) -> None:
    data_cfg = DataConfig(image_size=(64, 48), max_rois=3, max_text_len=12)
    model = MMCLIP.from_config(tiny_cfg, data_cfg)
    with torch.no_grad():
        model.logit_scales.log_scale.add_(0.5)  # a trained-looking value, not the init
    folder = tmp_path / "export"
    model.save_pretrained(folder)
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "text_encoder"}
    assert (folder / "text_encoder" / "config.json").is_file() and (
        folder / "text_encoder" / "tokenizer.json"
    ).is_file()
    # Portable: no absolute path (tmp dir, text encoder folder) in any file of the export.
    for path in folder.rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            assert str(tmp_path).encode() not in raw, path
            assert str(tiny_cfg.text_encoder).encode() not in raw, path
    meta = json.loads((folder / "config.json").read_text())
    assert meta["data"] == {"image_size": [64, 48], "max_rois": 3, "max_text_len": 12}
    assert meta["model"]["text_encoder"] == "text_encoder" and meta["model"]["backbone"] == "test_resnet"

    loaded = MMCLIP.from_pretrained(folder)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    batch = random_batch(2, (64, 48), max_rois=3, text_len=12)
    model.eval(), loaded.eval()
    with torch.no_grad():
        a, b = model(batch), loaded(batch)
    assert torch.equal(a.image_embed, b.image_embed) and torch.equal(a.text_embed, b.text_embed)
    assert loaded.data_cfg.max_rois == 3
    # An export of the export is the same portable folder (no path leaks on re-save either).
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == meta


def test_from_pretrained_rejects_non_exports(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        MMCLIP.from_pretrained(tmp_path)
