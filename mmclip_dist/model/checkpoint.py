"""DeepSpeed-independent MM-CLIP export: one folder that loads with ``MMCLIP.from_pretrained(folder)``.

Layout (every reference inside is relative to the folder, so it can be moved, uploaded or shared)::

    folder/
      config.json            {"format": ..., "model": ModelConfig, "data": {image_size, max_rois, max_text_len}}
      model.safetensors      consolidated fp32 weights of the whole MMCLIP module
      text_encoder/          the text encoder's Hugging Face config.json + its tokenizer files

The text encoder's weights are in ``model.safetensors`` (they were fine-tuned with everything else);
``text_encoder/`` only carries its architecture config and tokenizer so loading needs no hub access.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from mmclip_dist.config import DataConfig, ModelConfig

if TYPE_CHECKING:
    from mmclip_dist.model.mmclip import MMCLIP

FORMAT = "mmclip-dist/1"
TEXT_DIR = "text_encoder"
WEIGHTS = "model.safetensors"
DATA_FIELDS = ("image_size", "max_rois", "max_text_len")


def _portable_model_config(cfg: ModelConfig) -> dict:
    data = cfg.model_dump(mode="json")
    # Weights travel in model.safetensors, so the sources (hub id, local folder, checkpoint file)
    # are not needed to load; keep a hub id / 'timm' as provenance, never a local path.
    source = {
        "text_encoder": cfg.text_encoder if not Path(cfg.text_encoder).exists() else "",
        "backbone_weights": cfg.backbone_weights if cfg.backbone_weights in ("", "timm") else "file",
    }
    data.update(text_encoder=TEXT_DIR, tokenizer=TEXT_DIR, backbone_weights="")
    return {"model": data, "source": source}


def save_pretrained(model: MMCLIP, folder: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model`` (or the given consolidated ``state_dict``) to ``folder``; returns the folder."""
    out = Path(folder)
    (out / TEXT_DIR).mkdir(parents=True, exist_ok=True)
    if state_dict is None:
        state_dict = model.state_dict()
    tensors = {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous()
        for k, v in state_dict.items()
    }
    save_file(tensors, str(out / WEIGHTS), metadata={"format": FORMAT})
    model.text.backbone.config.save_pretrained(str(out / TEXT_DIR))
    if model.tokenizer_source is None:
        raise ValueError("model has no tokenizer_source; build it with MMCLIP.from_config or from_pretrained")
    AutoTokenizer.from_pretrained(model.tokenizer_source).save_pretrained(str(out / TEXT_DIR))
    meta = {"format": FORMAT, **_portable_model_config(model.cfg)}
    meta["data"] = None if model.data_cfg is None else {k: getattr(model.data_cfg, k) for k in DATA_FIELDS}
    (out / "config.json").write_text(json.dumps(meta, indent=2, default=list) + "\n")
    return out


def load_pretrained(folder: str | Path) -> MMCLIP:
    """Rebuild the model from ``folder``'s configs and load its weights (strict)."""
    from mmclip_dist.model.mmclip import MMCLIP
    from mmclip_dist.model.text import TextEncoder

    root = Path(folder)
    config_path = root / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not an MM-CLIP export (no config.json)")
    meta = json.loads(config_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{config_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    text_dir = str(root / TEXT_DIR)
    cfg = ModelConfig.model_validate({**meta["model"], "text_encoder": text_dir, "tokenizer": text_dir})
    data_cfg = None if meta.get("data") is None else DataConfig.model_validate(meta["data"])
    text = TextEncoder.from_hf_config(text_dir, **MMCLIP._text_kwargs(cfg))
    model = MMCLIP(cfg, text, data_cfg)
    missing, unexpected = model.load_state_dict(load_file(str(root / WEIGHTS)), strict=False)
    if missing or unexpected:
        raise ValueError(f"{root / WEIGHTS}: missing keys {missing[:5]}..., unexpected keys {unexpected[:5]}...")
    model.tokenizer_source = text_dir
    return model
