"""MM-CLIP network: Region Focus Module, visual encoder + RoIAlign, text encoder, matching heads."""

from mmclip_dist.model.mmclip import MMCLIP, MMCLIPOutput

__all__ = ["MMCLIP", "MMCLIPOutput"]
