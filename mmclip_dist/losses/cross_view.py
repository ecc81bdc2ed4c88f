"""Cross-view consistency loss (paper Eq. 9) on the global image embeddings of CC vs MLO."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_view_terms(cc: torch.Tensor, mlo: torch.Tensor, lam: float) -> torch.Tensor:
    """Per breast ``1 - cos(cc, mlo) + lam * ||cc - mlo||^2`` ``[n]``; Eq. 9 is their mean over the batch.

    The embeddings are L2-normalised, so the squared distance is ``2 - 2 cos`` and Eq. 9 equals
    ``(1 + 2 lam)(1 - cos)``; it is computed as written so unnormalised inputs keep the paper's meaning.
    """
    if cc.shape != mlo.shape:
        raise ValueError(f"CC and MLO embeddings differ in shape: {tuple(cc.shape)} vs {tuple(mlo.shape)}")
    return 1.0 - F.cosine_similarity(cc, mlo, dim=-1) + lam * (cc - mlo).pow(2).sum(-1)
