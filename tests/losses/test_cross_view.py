"""Cross-view consistency (Eq. 9): hand-computed values."""

import math

import pytest
import torch

from mmclip_dist.losses.cross_view import cross_view_terms


def test_hand_values() -> None:
    cc = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    mlo = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    # identical: 0; orthogonal: 1 - 0 + 0.1 * 2; cos = 0.96, ||d||^2 = 0.08
    got = cross_view_terms(cc, mlo, lam=0.1)
    assert torch.allclose(got, torch.tensor([0.0, 1.2, 0.04 + 0.1 * 0.08]), atol=1e-6)


def test_normalised_inputs_give_one_plus_two_lambda_times_one_minus_cos() -> None:
    g = torch.Generator().manual_seed(0)
    cc = torch.nn.functional.normalize(torch.randn(5, 7, generator=g), dim=-1)
    mlo = torch.nn.functional.normalize(torch.randn(5, 7, generator=g), dim=-1)
    cos = (cc * mlo).sum(-1)
    assert torch.allclose(cross_view_terms(cc, mlo, 0.3), (1 + 2 * 0.3) * (1 - cos), atol=1e-6)
    assert not math.isclose(float(cross_view_terms(cc, mlo, 0.0).sum()), float(cross_view_terms(cc, mlo, 0.3).sum()))


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        cross_view_terms(torch.zeros(2, 3), torch.zeros(3, 3), 0.1)
