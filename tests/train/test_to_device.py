"""The training loop moves batches to the device: only images and masks follow the training precision."""

from __future__ import annotations


def test_to_device_casts_only_images_and_masks() -> None:
    import torch

    from mmclip_dist.train.loop import _to_device

    batch = {
        "images": torch.rand(1, 2, 1, 4, 4),
        "masks": torch.zeros(1, 2, 1, 4, 4),
        "boxes": torch.tensor([[[[1.0, 2.0, 701.0, 3.0]]] * 2]),
        "box_valid": torch.ones(1, 2, 1, dtype=torch.bool),
        "input_ids": torch.ones(1, 2, 3, dtype=torch.long),
        "keys": ["k"],
    }
    out = _to_device(batch, torch.device("cpu"), torch.bfloat16)
    assert out["images"].dtype == out["masks"].dtype == torch.bfloat16
    assert out["boxes"].dtype == torch.float32 and float(out["boxes"][0, 0, 0, 2]) == 701.0  # bf16 would say 700
    assert out["box_valid"].dtype == torch.bool and out["input_ids"].dtype == torch.long and out["keys"] == ["k"]
