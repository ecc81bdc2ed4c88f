"""Small local stand-ins for the debug mode, tests and benchmarks: a tiny text encoder and random batches.

``build_debug_text_encoder`` trains the WordPiece tokenizer on the given reports and saves a tiny
random BERT beside it (no hub access); ``random_batch`` makes a batch dict with the loader's exact
keys, shapes and dtypes (docs/architecture.md) for smoke tests of the model and the loss.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from mmclip_dist.model.tokenizer import build_text_encoder_folder, train_wordpiece_tokenizer

SAMPLE_REPORTS = (
    "Projection Position: LCC\nBreast Density: B.\nA mass in the upper outer quadrant, BI-RADS 4.",
    "Projection Position: RMLO\nBreast Density: C.\nNo suspicious findings, BI-RADS 1.",
    "Projection Position: LMLO\nBreast Density: D.\nClustered calcifications, suspicious, BI-RADS 5.",
    "Projection Position: RCC\nBreast Density: A.\nArchitectural distortion and asymmetry, BI-RADS 3.",
)


def build_debug_text_encoder(
    out_dir: str | Path,
    texts: Iterable[str] = SAMPLE_REPORTS,
    vocab_size: int = 1000,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
) -> Path:
    """Tokenizer trained on ``texts`` + a random ``BertModel`` saved in ``out_dir`` (use as ``model.text_encoder``)."""
    tokenizer = train_wordpiece_tokenizer(texts, out_dir, vocab_size=vocab_size)
    return build_text_encoder_folder(out_dir, tokenizer, hidden_size=hidden_size, layers=layers, heads=heads, seed=seed)


def random_batch(
    batch: int,
    image_size: tuple[int, int] = (64, 48),
    max_rois: int = 3,
    text_len: int = 12,
    vocab_size: int = 50,
    valid_rois: Sequence[Sequence[int]] | None = None,
    seed: int = 0,
) -> dict:
    """A loader-shaped batch. ``valid_rois[b][v]``: valid boxes of view v of breast b (default: random)."""
    g = torch.Generator().manual_seed(seed)
    h, w = image_size
    if valid_rois is None:
        counts = torch.randint(0, max_rois + 1, (batch, 2), generator=g)
    else:
        counts = torch.tensor(valid_rois, dtype=torch.long).view(batch, 2)
    box_valid = torch.arange(max_rois)[None, None, :] < counts[..., None]
    # Boxes inside the image with positive extent.
    x1 = torch.rand(batch, 2, max_rois, generator=g) * w * 0.6
    y1 = torch.rand(batch, 2, max_rois, generator=g) * h * 0.6
    bw = (torch.rand(batch, 2, max_rois, generator=g) * 0.3 + 0.1) * w
    bh = (torch.rand(batch, 2, max_rois, generator=g) * 0.3 + 0.1) * h
    boxes = torch.stack([x1, y1, x1 + bw, y1 + bh], dim=-1) * box_valid[..., None]
    masks = torch.zeros(batch, 2, 1, h, w)
    ys, xs = torch.arange(h)[:, None] + 0.5, torch.arange(w)[None, :] + 0.5
    for b in range(batch):
        for v in range(2):
            for r in range(int(counts[b, v])):
                bx1, by1, bx2, by2 = boxes[b, v, r].tolist()
                masks[b, v, 0] += ((xs >= bx1) & (xs <= bx2) & (ys >= by1) & (ys <= by2)).float()
    lengths = torch.randint(text_len // 2, text_len + 1, (batch, 2), generator=g)
    attention_mask = (torch.arange(text_len)[None, None, :] < lengths[..., None]).long()
    # Ids 5.. avoid the special tokens (0-4: [PAD] [UNK] [CLS] [SEP] [MASK]); [CLS] first like a tokenizer.
    input_ids = torch.randint(5, vocab_size, (batch, 2, text_len), generator=g) * attention_mask
    input_ids[..., 0] = 2
    return {
        "images": torch.rand(batch, 2, 1, h, w, generator=g),
        "masks": masks.clamp_max(1.0),
        "boxes": boxes,
        "box_valid": box_valid,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "label": torch.randint(0, 2, (batch,), generator=g),
        "keys": [f"{seed:04d}{b:06d}" for b in range(batch)],
    }
