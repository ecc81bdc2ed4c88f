"""Region Focus Module: 1x1 convs of image and mask, added (Fig. 4)."""

import pytest
import torch

from mmclip_dist.model.region_focus import RegionFocus


def test_init_is_backbone_normalisation_and_mask_branch_is_a_plain_conv() -> None:
    torch.manual_seed(0)
    rf = RegionFocus(3, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    image = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]]])
    without = rf(image, torch.zeros_like(image))
    assert without.shape == (1, 3, 2, 2)
    # (x - mean) / std per channel where the mask is 0.
    assert torch.allclose(without[0, 0], torch.tensor([[-1.0, 1.0], [0.0, -0.5]]))
    assert torch.allclose(without[0, 1], torch.tensor([[-1.0, 3.0], [1.0, 0.0]]))
    assert torch.allclose(without[0, 2], torch.tensor([[0.0, 0.5], [0.25, 0.125]]))
    # The mask marks the lesion from step 0: a non-zero per-channel offset where it is 1.
    offset = rf(image, torch.ones_like(image)) - without
    assert torch.allclose(offset, rf.mask_conv.weight.view(1, 3, 1, 1).expand_as(offset))
    assert offset.abs().min() > 0


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


def test_mask_branch_gets_gradient() -> None:
    rf = RegionFocus(3)
    image, mask = torch.rand(2, 1, 4, 4), (torch.rand(2, 1, 4, 4) > 0.5).float()
    rf(image, mask).sum().backward()
    # d/dW of a sum through a 1x1 conv = sum of the mask input, per output channel.
    assert torch.allclose(rf.mask_conv.weight.grad.flatten(), mask.sum().expand(3))


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        RegionFocus(3)(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 5))
