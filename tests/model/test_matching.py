"""Matching heads (Eq. 4-5): logit scales and the batched, chunked RoI matcher."""

import math

import pytest
import torch
import torch.nn.functional as F

from mmclip_dist.model.matching import LogitScales, RoIMatcher


def test_logit_scales_init_and_clamp() -> None:
    scales = LogitScales(init_temperature=0.05)
    assert torch.allclose(scales(100.0), torch.full((4,), 20.0))
    assert torch.allclose(scales(10.0), torch.full((4,), 10.0))
    with torch.no_grad():
        scales.log_scale[1] = math.log(3.0)
    out = scales(10.0)
    out.sum().backward()
    # Clamped entries get no gradient (like CLIP's clamp), the free one gets d exp(s)/ds = exp(s) = 3.
    assert torch.allclose(scales.log_scale.grad, torch.tensor([0.0, 3.0, 0.0, 0.0]))


def reference_score(
    m: RoIMatcher, roi: torch.Tensor, valid: torch.Tensor, tok: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """One (image, text) pair at a time with torch's own attention: the definition of Eq. 5's score."""
    d = roi.shape[-1]
    out = torch.zeros(roi.shape[0], tok.shape[0])
    for i in range(roi.shape[0]):
        for j in range(tok.shape[0]):
            keys = tok[j][mask[j].bool()]
            q = m.q_proj(roi[i]).view(-1, m.heads, m.head_dim).transpose(0, 1)
            k = m.k_proj(keys).view(-1, m.heads, m.head_dim).transpose(0, 1)
            v = m.v_proj(keys).view(-1, m.heads, m.head_dim).transpose(0, 1)
            ctx = F.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(-1, d)
            per_roi = m.score_head(m.norm(roi[i] + m.out_proj(ctx))).squeeze(-1)
            sel = valid[i].bool()
            out[i, j] = per_roi[sel].mean() if sel.any() else 0.0
    return out


def _inputs(ni: int = 3, nt: int = 5, r: int = 3, length: int = 6, d: int = 8):
    g = torch.Generator().manual_seed(0)
    roi = torch.randn(ni, r, d, generator=g)
    valid = torch.tensor([[True, True, False], [False, False, False], [True, True, True]])[:ni]
    tok = torch.randn(nt, length, d, generator=g)
    lengths = torch.tensor([6, 2, 4, 1, 5])[:nt]
    mask = torch.arange(length)[None] < lengths[:, None]
    return roi, valid, tok, mask


def test_batched_scores_match_the_per_pair_definition() -> None:
    torch.manual_seed(0)
    m = RoIMatcher(8, heads=2).eval()
    roi, valid, tok, mask = _inputs()
    with torch.no_grad():
        got = m(roi, valid, tok, mask, chunk_size=2)
        ref = reference_score(m, roi, valid, tok, mask)
    assert got.shape == (3, 5)
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.all(got[1] == 0)  # image without a valid RoI


def test_padding_tokens_do_not_matter() -> None:
    m = RoIMatcher(8, heads=2).eval()
    roi, valid, tok, mask = _inputs()
    other = torch.where(mask[..., None], tok, torch.randn_like(tok) * 50)
    with torch.no_grad():
        assert torch.allclose(m(roi, valid, tok, mask), m(roi, valid, other, mask), atol=1e-5)


@pytest.mark.parametrize("chunk,ckpt", [(1, True), (2, False), (3, True), (64, True)])
def test_chunking_and_checkpointing_are_exact_with_dropout(chunk: int, ckpt: bool) -> None:
    torch.manual_seed(0)
    m = RoIMatcher(8, heads=2, dropout=0.3).train()
    roi, valid, tok, mask = _inputs()
    roi.requires_grad_(True)
    tok.requires_grad_(True)
    weights = torch.randn(3, 5)

    def run(chunk_size: int, use_ckpt: bool):
        m.zero_grad()
        roi.grad = tok.grad = None
        torch.manual_seed(7)
        # One chunk per text so the dropout draws are the same size and order in both runs.
        parts = [
            m(
                roi,
                valid,
                tok[s : s + chunk_size],
                mask[s : s + chunk_size],
                chunk_size=chunk_size,
                use_checkpoint=use_ckpt,
            )
            for s in range(0, 5, chunk_size)
        ]
        out = torch.cat(parts, 1)
        (out * weights).sum().backward()
        return out.detach(), roi.grad.clone(), tok.grad.clone(), [p.grad.clone() for p in m.parameters()]

    def run_internal(chunk_size: int, use_ckpt: bool):
        m.zero_grad()
        roi.grad = tok.grad = None
        torch.manual_seed(7)
        out = m(roi, valid, tok, mask, chunk_size=chunk_size, use_checkpoint=use_ckpt)
        (out * weights).sum().backward()
        return out.detach(), roi.grad.clone(), tok.grad.clone(), [p.grad.clone() for p in m.parameters()]

    # Internal chunking (with or without recompute) == calling the matcher chunk by chunk without recompute.
    a = run_internal(chunk, ckpt)
    b = run(chunk, False)
    assert torch.allclose(a[0], b[0], atol=1e-6)
    assert torch.allclose(a[1], b[1], atol=1e-6) and torch.allclose(a[2], b[2], atol=1e-6)
    for ga, gb in zip(a[3], b[3]):
        assert torch.allclose(ga, gb, atol=1e-6)


def test_chunk_size_is_independent_of_the_result_without_dropout() -> None:
    m = RoIMatcher(8, heads=2).eval()
    roi, valid, tok, mask = _inputs()
    full = m(roi, valid, tok, mask, chunk_size=64)
    for chunk in (1, 2, 4):
        assert torch.allclose(m(roi, valid, tok, mask, chunk_size=chunk), full, atol=1e-6)


def test_dim_must_divide_heads() -> None:
    with pytest.raises(ValueError, match="roi_match_heads"):
        RoIMatcher(10, heads=3)
