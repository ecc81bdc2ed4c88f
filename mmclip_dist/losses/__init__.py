"""MM-CLIP losses: gather-with-grad, global/RoI CLIP, cross-view, weighted total, micro-batch feature cache."""

from mmclip_dist.losses.mmclip_loss import MMCLIPLoss

__all__ = ["MMCLIPLoss"]
