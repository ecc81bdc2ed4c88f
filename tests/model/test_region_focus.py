"""Region Focus Module: 1x1 convs of image and mask, added (Fig. 4)."""

import pytest
import torch

from mmclip_dist.model.region_focus import RegionFocus


def test_init_is_backbone_normalisation_and_mask_branch_is_zero() -> None:
    rf = RegionFocus(3, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    image = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]]])
    mask = torch.ones_like(image)
    out = rf(image, mask)
    assert out.shape == (1, 3, 2, 2)
    # (x - mean) / std per channel, mask contributes nothing at init.
    assert torch.allclose(out[0, 0], torch.tensor([[-1.0, 1.0], [0.0, -0.5]]))
    assert torch.allclose(out[0, 1], torch.tensor([[-1.0, 3.0], [1.0, 0.0]]))
    assert torch.allclose(out[0, 2], torch.tensor([[0.0, 0.5], [0.25, 0.125]]))


def test_output_is_sum_of_both_convolutions() -> None:
    rf = RegionFocus(3)
    with torch.no_grad():
        rf.image_conv.weight.copy_(torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1))
        rf.image_conv.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
        rf.mask_conv.weight.copy_(torch.tensor([10.0, 20.0, 30.0]).view(3, 1, 1, 1))
        rf.mask_conv.bias.copy_(torch.tensor([0.5, 0.0, 0.0]))
    image = torch.tensor([[[[2.0]]]])
    mask = torch.tensor([[[[1.0]]]])
    out = rf(image, mask).flatten()
    assert out.tolist() == [2.0 + 10.0 + 0.5, 4.0 + 20.0, 6.0 + 1.0 + 30.0]


def test_mask_branch_learns_from_zero_init() -> None:
    rf = RegionFocus(3)
    image, mask = torch.rand(2, 1, 4, 4), (torch.rand(2, 1, 4, 4) > 0.5).float()
    rf(image, mask).sum().backward()
    # d/dW of a sum through a 1x1 conv = sum of the mask input, per output channel.
    assert torch.allclose(rf.mask_conv.weight.grad.flatten(), mask.sum().expand(3))


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        RegionFocus(3)(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 5))
