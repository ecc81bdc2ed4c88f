"""RoI CLIP loss (paper Eq. 5 + Eq. 6 per view) with masking of views that have no lesion box.

The matching matrix ``M_roi[i, j] = alpha * P(T(L(Q_i, K_j)))`` needs the RoI matcher for every
(image, text) pair of the global batch. This rank owns rows ``i`` of its local images (image->text
CE against all texts) and rows ``j`` of its local texts (text->image CE against all images), so it
scores ``local images x all texts`` and ``all images x local texts`` -- never the full ``N x N``.

A view with no valid RoI has no RoI feature, so its score is undefined: such samples are removed from
both rows and columns (columns filled with the dtype's lowest finite value, which gives exactly zero
softmax mass and no NaN even when a whole row is masked). The term is the mean over the *global*
number of samples with RoIs, so ranks with different valid counts still average to the exact
single-process gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mmclip_dist.precision import upcast

ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def roi_clip_rows(
    score: ScoreFn,
    local: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    everyone: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    scale: torch.Tensor,
    targets: torch.Tensor,
    single_process: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked Eq. 6 summands of this rank's rows for one view.

    ``local`` / ``everyone``: ``(roi_feats [n|N, R, Dr], roi_valid [., R], text_tokens [., L, Dr],
    text_mask [., L])``; ``score(roi, valid, tokens, mask) -> [Ni, Nt]`` is the RoI matcher.
    Returns ``(row_sum, n_valid_global)``: the summed ``CE_i2t + CE_t2i`` over local rows with RoIs
    (a scalar) and the global count of samples with RoIs (no grad).
    """
    roi_l, valid_l, tok_l, mask_l = local
    roi_a, valid_a, tok_a, mask_a = everyone
    has_l = valid_l.any(-1)
    has_a = valid_a.any(-1)
    i2t = upcast(score(roi_l, valid_l, tok_a, mask_a))  # [n, N]
    # One process owns all rows and columns: both directions read the same matrix, scored once.
    t2i = i2t.T if single_process else upcast(score(roi_a, valid_a, tok_l, mask_l)).T  # [n, N]
    lowest = torch.finfo(i2t.dtype).min
    col_off = ~has_a[None, :]
    total = i2t.new_zeros(())
    for logits in (i2t, t2i):
        ce = F.cross_entropy((scale * logits).masked_fill(col_off, lowest), targets, reduction="none")
        # A row without RoIs has its own target masked, so its CE is huge (finite); `where` (not a
        # product, which could meet inf) drops it, and (not indexing) keeps every rank's graph the
        # same shape even when a rank has no valid row.
        total = total + torch.where(has_l, ce, torch.zeros_like(ce)).sum()
    return total, has_a.sum()
