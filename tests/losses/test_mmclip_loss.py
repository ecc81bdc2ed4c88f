"""MMCLIPLoss (Eq. 7-10) on one process, checked term by term against the equations."""

import pytest
import torch

from mmclip_devtools.toy_models import random_batch
from mmclip_dist.config import LossConfig, ModelConfig
from mmclip_dist.losses import MMCLIPLoss
from mmclip_dist.losses.clip import clip_loss_naive
from mmclip_dist.model import MMCLIP

VALID = [[1, 0], [2, 3], [0, 0], [1, 1], [0, 2]]
SCALES = ("logit_scale_cc", "logit_scale_mlo", "roi_scale_cc", "roi_scale_mlo")


@pytest.fixture()
def setup(tiny_cfg: ModelConfig):
    torch.manual_seed(0)
    model = MMCLIP.from_config(tiny_cfg).eval()
    with torch.no_grad():  # distinct scales so a swapped alpha would show
        model.logit_scales.log_scale.copy_(torch.log(torch.tensor([5.0, 7.0, 3.0, 2.0])))
    batch = random_batch(5, (64, 48), max_rois=3, text_len=10, valid_rois=VALID)
    return model, batch


def test_terms_follow_the_equations(setup) -> None:
    model, batch = setup
    cfg = LossConfig(global_weight=1.0, roi_weight=0.5, cross_view_weight=0.2, cross_view_lambda=0.1, roi_chunk_size=2)
    out = model(batch)
    terms = MMCLIPLoss(cfg)(out, model)
    img, txt = out.image_embed, out.text_embed
    # Eq. 7: mean over views of Eq. 6 with alpha_0 (CC) and alpha_1 (MLO).
    glob = (
        clip_loss_naive(img[:, 0], txt[:, 0], torch.tensor(5.0))
        + clip_loss_naive(img[:, 1], txt[:, 1], torch.tensor(7.0))
    ) / 2
    assert torch.allclose(terms["loss_global"], glob, atol=1e-5)
    # Eq. 8: per view, RoI matcher scores x alpha_2/alpha_3 on the breasts whose view has a RoI.
    roi_terms = []
    for v, scale in ((0, 3.0), (1, 2.0)):
        keep = out.roi_valid[:, v].any(-1)
        s = model.roi_matcher(
            out.roi_feats[keep, v], out.roi_valid[keep, v], out.text_tokens[keep, v], out.text_mask[keep, v]
        )
        logits = scale * s
        t = torch.arange(int(keep.sum()))
        roi_terms.append(torch.nn.functional.cross_entropy(logits, t) + torch.nn.functional.cross_entropy(logits.T, t))
    assert torch.allclose(terms["loss_roi"], sum(roi_terms) / 2, atol=1e-5)
    # Eq. 9 on the global image embeddings.
    cos = (img[:, 0] * img[:, 1]).sum(-1)
    cross = (1 - cos + 0.1 * (img[:, 0] - img[:, 1]).pow(2).sum(-1)).mean()
    assert torch.allclose(terms["loss_cross_view"], cross, atol=1e-6)
    # Eq. 10.
    assert torch.allclose(terms["loss"], glob + 0.5 * terms["loss_roi"] + 0.2 * cross, atol=1e-5)
    assert [round(float(terms[k]), 4) for k in SCALES] == [5.0, 7.0, 3.0, 2.0]
    assert not terms["logit_scale_cc"].requires_grad


def test_every_parameter_gets_a_gradient(setup) -> None:
    model, batch = setup
    model.train()
    MMCLIPLoss(LossConfig())(model(batch), model)["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_streamed_global_loss_equals_materialised(setup) -> None:
    model, batch = setup
    # fp64: the two formulations round differently, and the CLIP gradient's cancellation (positive
    # and negative pulls nearly balance) amplifies fp32 rounding to ~1e-4 relative on some heads.
    model.double()
    batch = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}

    def grads(chunk: int):
        model.zero_grad()
        terms = MMCLIPLoss(LossConfig(clip_chunk_size=chunk))(model(batch), model)
        terms["loss"].backward()
        return terms["loss"].detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    (la, ga), (lb, gb) = grads(0), grads(2)
    assert torch.allclose(la, lb, rtol=1e-12)
    for n in ga:
        # atol for the attention key biases, whose true gradient is 0 (softmax shift invariance).
        assert (ga[n] - gb[n]).norm() <= 1e-9 * gb[n].norm() + 1e-14, n


def test_scale_clamp(setup) -> None:
    model, batch = setup
    terms = MMCLIPLoss(LossConfig(max_logit_scale=4.0))(model(batch), model)
    assert [round(float(terms[k]), 4) for k in SCALES] == [4.0, 4.0, 3.0, 2.0]


def test_needs_a_full_output(setup) -> None:
    model, batch = setup
    with pytest.raises(ValueError, match="text_embed"):
        MMCLIPLoss(LossConfig())(model.encode_image(batch["images"]), model)


def test_wrapped_model_is_unwrapped(setup) -> None:
    model, batch = setup

    class Wrapper(torch.nn.Module):  # what DeepSpeed / DDP look like to the loss: the model under .module
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    out = model(batch)
    a = MMCLIPLoss(LossConfig())(out, model)["loss"]
    b = MMCLIPLoss(LossConfig())(out, Wrapper(model))["loss"]
    assert torch.equal(a, b)
    with pytest.raises(TypeError, match="roi_matcher"):
        MMCLIPLoss(LossConfig())(out, torch.nn.Linear(2, 2))
