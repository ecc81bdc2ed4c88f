"""RoI CLIP rows (Eq. 5 + 6): views without RoIs are masked out of rows and columns."""

import pytest
import torch

from mmclip_dist.losses.clip import clip_loss_naive
from mmclip_dist.losses.roi import roi_clip_rows


def first_feature_score(roi, valid, tok, mask):
    # A transparent stand-in for the matcher: dot product of the first RoI and the first token.
    return roi[:, 0] @ tok[:, 0].T


def _inputs(n: int = 6):
    g = torch.Generator().manual_seed(0)
    roi = torch.randn(n, 2, 4, generator=g, requires_grad=True)
    tok = torch.randn(n, 3, 4, generator=g, requires_grad=True)
    valid = torch.tensor([[True, False], [False, False], [True, True], [True, False], [False, False], [True, False]])
    mask = torch.ones(n, 3, dtype=torch.bool)
    return roi, valid, tok, mask


@pytest.mark.parametrize("single", [True, False])
def test_equals_clip_loss_on_the_samples_with_rois(single: bool) -> None:
    roi, valid, tok, mask = _inputs()
    scale = torch.tensor(3.0)
    both = (roi, valid, tok, mask)
    row_sum, n_valid = roi_clip_rows(first_feature_score, both, both, scale, torch.arange(6), single)
    keep = valid.any(-1)
    assert int(n_valid) == 4
    expected = clip_loss_naive(roi[keep, 0], tok[keep, 0], scale) * 4
    assert torch.allclose(row_sum, expected, atol=1e-6)
    # Masked samples get exactly zero gradient: they take part in no row and no column.
    row_sum.backward()
    assert torch.all(roi.grad[~keep] == 0) and torch.all(tok.grad[~keep] == 0)
    assert torch.all(roi.grad[keep, 0].abs().sum(-1) > 0)


def test_rank_split_rows_add_up() -> None:
    roi, valid, tok, mask = _inputs()
    scale = torch.tensor(2.0)
    both = (roi, valid, tok, mask)
    full, _ = roi_clip_rows(first_feature_score, both, both, scale, torch.arange(6), True)
    parts = []
    for lo in (0, 3):
        local = tuple(t[lo : lo + 3] for t in both)
        part, n_valid = roi_clip_rows(first_feature_score, local, both, scale, torch.arange(3) + lo, False)
        assert int(n_valid) == 4  # the global count, whatever this slice holds
        parts.append(part)
    assert torch.allclose(parts[0] + parts[1], full, atol=1e-6)


def test_no_valid_roi_anywhere_is_zero_and_finite() -> None:
    roi, valid, tok, mask = _inputs()
    valid = torch.zeros_like(valid)
    both = (roi, valid, tok, mask)
    row_sum, n_valid = roi_clip_rows(first_feature_score, both, both, torch.tensor(100.0), torch.arange(6), True)
    assert float(row_sum.detach()) == 0.0 and int(n_valid) == 0
    row_sum.backward()
    assert torch.isfinite(roi.grad).all() and torch.all(roi.grad == 0)
