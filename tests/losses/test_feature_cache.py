"""Feature cache: 4 micro-batches == one full contrastive batch, in loss and gradients, dropout active."""

import copy

import pytest
import torch

from mmclip_devtools.toy_models import random_batch
from mmclip_dist.config import LossConfig, ModelConfig
from mmclip_dist.losses import MMCLIPLoss
from mmclip_dist.losses.feature_cache import FeatureCache
from mmclip_dist.model import MMCLIP, MMCLIPOutput

VALID = [[1, 0], [2, 3], [0, 0], [1, 1], [0, 2], [3, 1], [1, 0], [0, 1]]


@pytest.fixture()
def setup(tiny_cfg: ModelConfig):
    torch.manual_seed(0)
    model = MMCLIP.from_config(tiny_cfg.model_copy(update={"dropout": 0.2}))
    batch = random_batch(8, (64, 48), max_rois=3, text_len=10, valid_rois=VALID, seed=3)
    micro = [{k: v[i : i + 2] for k, v in batch.items()} for i in range(0, 8, 2)]
    return model, batch, micro, MMCLIPLoss(LossConfig(roi_chunk_size=3))


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _close(a: dict, b: dict, rel: float = 1e-5) -> None:
    total = torch.sqrt(sum(g.pow(2).sum() for g in b.values()))
    for name in b:
        # The floor only matters for gradients that are 0 in exact arithmetic (softmax shift invariance).
        assert (a[name] - b[name]).norm() <= rel * b[name].norm() + 1e-6 * total, name


def test_four_micro_batches_equal_the_full_batch_with_dropout(setup) -> None:
    model, _, micro, loss_fn = setup
    model.train()
    initial = copy.deepcopy(model.state_dict())

    # Reference: the whole accumulated batch in one graph (each micro-batch forwarded in turn, so the
    # dropout masks and BatchNorm batch statistics are those a micro-batch sees), one loss, one backward.
    torch.manual_seed(11)
    ref_terms = loss_fn(MMCLIPOutput.cat([model(mb) for mb in micro]), model)
    ref_terms["loss"].backward()
    ref_grads, ref_buffers, ref_rng = _grads(model), copy.deepcopy(dict(model.named_buffers())), torch.get_rng_state()

    model.load_state_dict(initial)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(11)
    calls = []
    terms = FeatureCache(loss_fn, model).step(micro, model, lambda t: (calls.append(t.shape), t.backward()))
    assert len(calls) == 4  # one backward per micro-batch, activations of one micro-batch at a time
    assert float(terms["loss"]) == pytest.approx(float(ref_terms["loss"].detach()), rel=1e-6)
    for key in ("loss_global", "loss_roi", "loss_cross_view", "roi_scale_mlo"):
        assert float(terms[key]) == pytest.approx(float(ref_terms[key].detach()), rel=1e-6)
    _close(_grads(model), ref_grads)
    assert model.logit_scales.log_scale.grad.abs().sum() > 0 and model.roi_matcher.q_proj.weight.grad.abs().sum() > 0
    # BatchNorm running statistics updated once per micro-batch (not twice), RNG left where it would be.
    for name, buf in model.named_buffers():
        assert torch.equal(buf, ref_buffers[name]), name
    assert torch.equal(torch.get_rng_state(), ref_rng)


def test_dropout_is_really_active(setup) -> None:
    model, _, micro, _ = setup
    model.train()
    torch.manual_seed(1)
    a = model(micro[0]).text_embed
    torch.manual_seed(2)
    b = model(micro[0]).text_embed
    assert not torch.allclose(a, b)


def test_micro_batches_equal_one_forward_of_the_whole_batch_in_eval(setup) -> None:
    # Without dropout and with BatchNorm on running statistics a sample's features do not depend on
    # its batch, so the cache must equal a single forward + backward of the full batch.
    model, batch, micro, loss_fn = setup
    model.eval()
    ref = loss_fn(model(batch), model)
    ref["loss"].backward()
    ref_grads = _grads(model)
    model.zero_grad(set_to_none=True)
    terms = FeatureCache(loss_fn, model).step(micro, model, lambda t: t.backward())
    assert float(terms["loss"]) == pytest.approx(float(ref["loss"].detach()), rel=1e-5)
    _close(_grads(model), ref_grads, rel=1e-4)


def test_one_micro_batch_is_one_plain_forward_and_backward(setup) -> None:
    model, batch, _, loss_fn = setup
    model.train()
    initial = copy.deepcopy(model.state_dict())
    torch.manual_seed(5)
    ref_terms = loss_fn(model(batch), model)
    ref_terms["loss"].backward()
    ref_grads, ref_buffers = _grads(model), copy.deepcopy(dict(model.named_buffers()))

    model.load_state_dict(initial)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    forwards = []

    def forward(mb):
        forwards.append(mb["images"].shape[0])
        return model(mb)

    terms = FeatureCache(loss_fn, model).step([batch], forward, lambda t: t.backward())
    assert forwards == [8]  # no separate no-grad embedding pass, no replay
    assert float(terms["loss"]) == float(ref_terms["loss"].detach())
    _close(_grads(model), ref_grads, rel=0.0)
    for name, buf in model.named_buffers():
        assert torch.equal(buf, ref_buffers[name]), name


def test_bf16_model_through_the_cache_matches_fp32(tiny_cfg: ModelConfig) -> None:
    # The production precision: every weight bf16 (as DeepSpeed's bf16 mode), images and masks bf16,
    # boxes fp32 (train/loop.py), 4 micro-batches through the cache. Loss and gradients stay close to fp32.
    torch.manual_seed(0)
    model = MMCLIP.from_config(tiny_cfg.model_copy(update={"dropout": 0.0}))
    model16 = copy.deepcopy(model).bfloat16()
    batch = random_batch(8, (64, 48), max_rois=3, text_len=10, valid_rois=VALID, seed=3)
    micro = [{k: v[i : i + 2] for k, v in batch.items()} for i in range(0, 8, 2)]
    micro16 = [{k: v.bfloat16() if k in ("images", "masks") else v for k, v in mb.items()} for mb in micro]
    assert micro16[0]["boxes"].dtype == torch.float32
    loss_fn = MMCLIPLoss(LossConfig(roi_chunk_size=3))
    # eval(): BatchNorm on running statistics. In train mode a micro-batch of 2 tiny images gives
    # near-zero batch variances, and the gradients differ even between fp32 and fp64 (ill-conditioned).
    model.eval(), model16.eval()
    ref = FeatureCache(loss_fn, model).step(micro, forward=model, backward=lambda t: t.backward())
    got = FeatureCache(loss_fn, model16).step(micro16, forward=model16, backward=lambda t: t.backward())
    for name in ("loss", "loss_global", "loss_roi", "loss_cross_view"):
        assert got[name].dtype == torch.float32, name  # the loss itself is computed in fp32
        assert abs(float(got[name]) - float(ref[name])) <= 0.03 * abs(float(ref[name])) + 1e-3, name
    g32 = torch.cat([p.grad.flatten() for p in model.parameters()])
    g16 = torch.cat([p.grad.float().flatten() for p in model16.parameters()])
    assert torch.isfinite(g16).all()
    assert float(torch.nn.functional.cosine_similarity(g32, g16, dim=0)) > 0.95
