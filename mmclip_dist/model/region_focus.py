"""Region Focus Module (paper Fig. 4, the xi of Eq. 1): image and lesion mask -> backbone input.

The one-channel mammogram and its one-channel lesion mask each go through a 1x1 convolution to
``C = 3`` channels and the two are added element-wise. Three output channels (not one) so that any
ImageNet-pretrained timm stem applies unchanged: no stem surgery, the pretrained first convolution
sees the channel layout it was trained on.

Initialisation: the image branch is set to the backbone's own input normalisation, ``(x - mean_c) / std_c``
per output channel (a grayscale image replicated into RGB, normalised as the backbone expects); the mask
branch is a plain 1x1 convolution (PyTorch's default init, bias 0), so the lesion region is marked in the
backbone input from step 0. A zero-initialised mask branch (the earlier choice) receives gradient but, at
the paper's learning rates (1e-6 per 16 images), stays near zero for the whole run: the backbone never
learns where the lesion is from the mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class RegionFocus(nn.Module):
    """``xi(I, M) = conv1x1(I) + conv1x1(M)``, both ``[N, 1, H, W] -> [N, out_channels, H, W]``."""

    def __init__(
        self,
        out_channels: int = 3,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        super().__init__()
        if len(mean) != out_channels or len(std) != out_channels:
            raise ValueError(f"mean/std need {out_channels} entries, got {len(mean)} and {len(std)}")
        self.image_conv = nn.Conv2d(1, out_channels, kernel_size=1)
        self.mask_conv = nn.Conv2d(1, out_channels, kernel_size=1)
        with torch.no_grad():
            std_t = torch.tensor([float(s) for s in std])
            mean_t = torch.tensor([float(m) for m in mean])
            self.image_conv.weight.copy_((1.0 / std_t).view(out_channels, 1, 1, 1))
        # Parameters rather than copy_ into .bias, which torch types as Optional. The mask branch keeps
        # PyTorch's default (non-zero) weight init: a zero start stays near zero at the presets' lr.
        self.image_conv.bias = nn.Parameter(-mean_t / std_t)
        self.mask_conv.bias = nn.Parameter(torch.zeros(out_channels))  # the image branch's bias places the input

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if image.shape != mask.shape or image.dim() != 4 or image.shape[1] != 1:
            raise ValueError(
                f"RegionFocus expects image and mask of equal shape [N, 1, H, W], got "
                f"{tuple(image.shape)} and {tuple(mask.shape)}"
            )
        return self.image_conv(image) + self.mask_conv(mask)
