"""Image-text similarity matrices of one batch (paper Fig. 7): global embeddings and RoI matching.

Rows are images, columns the reports of the same breasts, so matched pairs sit on the diagonal. The
global matrix is the scaled cosine similarity of Eq. 4; the RoI matrix is the RoI matcher's score
(Eq. 5), over the breasts whose view has at least one lesion box (others have no RoI feature).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

VIEW_INDEX = {"cc": 0, "mlo": 1}


@torch.no_grad()
def similarity_matrices(model: Any, batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """``{"global_cc": [B, B], "roi_cc": [B', B'], "global_mlo": ..., "roi_mlo": ...}``.

    B' = breasts with a lesion box on that view; a RoI matrix needs at least two of them.
    """
    model.eval()
    device = next(model.parameters()).device
    out = model({k: (t.to(device) if isinstance(t, torch.Tensor) else t) for k, t in batch.items()})
    scales = model.logit_scales()
    matrices = {}
    for view, v in VIEW_INDEX.items():
        image, text = out.image_embed[:, v].float(), out.text_embed[:, v].float()
        matrices[f"global_{view}"] = (scales[v] * image @ text.T).cpu().numpy()
        has_roi = out.roi_valid[:, v].any(-1)
        if has_roi.sum() >= 2:
            roi = model.roi_matcher(
                out.roi_feats[has_roi, v],
                out.roi_valid[has_roi, v],
                out.text_tokens[has_roi, v],
                out.text_mask[has_roi, v],
            )
            matrices[f"roi_{view}"] = (scales[2 + v] * roi.float()).cpu().numpy()
    return matrices
