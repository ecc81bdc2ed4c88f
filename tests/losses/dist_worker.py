"""One process of the distributed-exactness test (run as a script; not a test module).

``python dist_worker.py RANK WORLD PORT TEXT_FOLDER OUT`` builds the same tiny MM-CLIP on every process,
takes this rank's slice of one fixed global batch (world 1: the whole batch), and saves the loss terms
and parameter gradients of each term separately, plus those of the feature-cache path with two
micro-batches per rank, in fp32 and in fp64. The test compares the rank average with the single-process run.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from mmclip_devtools.toy_models import random_batch  # noqa: E402
from mmclip_dist.config import LossConfig, ModelConfig  # noqa: E402
from mmclip_dist.losses import MMCLIPLoss  # noqa: E402
from mmclip_dist.losses.distributed import mean_across_ranks  # noqa: E402
from mmclip_dist.losses.feature_cache import FeatureCache  # noqa: E402
from mmclip_dist.model import MMCLIP, MMCLIPOutput  # noqa: E402

GLOBAL_BATCH = 8
# Views with at least one RoI: first half (rank 0) CC 3 / MLO 3, second half (rank 1) CC 1 / MLO 1.
VALID_ROIS = [[1, 2], [0, 1], [3, 0], [1, 1], [0, 0], [0, 2], [0, 0], [1, 0]]
TERMS = ("loss_global", "loss_roi", "loss_cross_view", "loss")


def run(rank: int, world: int, text_folder: str, dtype: torch.dtype) -> dict:
    cfg = ModelConfig(
        backbone="test_resnet",
        text_encoder=text_folder,
        embed_dim=16,
        roi_match_dim=16,
        roi_match_heads=2,
        roi_output_size=3,
        dropout=0.1,
        text_pooling="mean",
    )
    torch.manual_seed(0)
    # eval(): no dropout and BatchNorm on running statistics, so a sample's features do not depend on
    # which other samples share its process -- the remaining differences are the loss's business.
    model = MMCLIP.from_config(cfg).eval().to(dtype)
    with torch.no_grad():
        model.logit_scales.log_scale.copy_(torch.log(torch.tensor([5.0, 7.0, 3.0, 2.0])))
    loss_fn = MMCLIPLoss(LossConfig(roi_chunk_size=3, roi_checkpoint=True))
    full = random_batch(GLOBAL_BATCH, (64, 48), max_rois=3, text_len=10, valid_rois=VALID_ROIS, seed=5)
    # A random network maps noise images (and CLS tokens) to nearly one direction (cos ~ 0.9999);
    # the CLIP gradient then cancels almost exactly and fp32 rounding dominates it. Per-view
    # brightness/contrast and mean pooling spread the embeddings like a trained model's.
    g = torch.Generator().manual_seed(1)
    gain = torch.rand(GLOBAL_BATCH, 2, 1, 1, 1, generator=g) * 3
    full["images"] = full["images"] * gain + torch.rand(GLOBAL_BATCH, 2, 1, 1, 1, generator=g) * 2 - 1
    per_rank = GLOBAL_BATCH // world
    sl = slice(rank * per_rank, (rank + 1) * per_rank)
    local = {k: (v[sl].to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v[sl]) for k, v in full.items()}
    names, params = zip(*model.named_parameters())

    result: dict = {"values": {}, "grads": {}}
    # The single process embeds its batch in the ranks' slices: the same features bit for bit, so
    # fp32 differences come from the loss alone, not from conv kernels picked by batch size.
    slices = [slice(i, i + GLOBAL_BATCH // 2) for i in range(0, per_rank, GLOBAL_BATCH // 2)]
    out = MMCLIPOutput.cat([model({k: v[s] for k, v in local.items()}) for s in slices])
    terms = loss_fn(out, model)
    for term in TERMS:
        # Same order on every rank: the backward of the all-gathers is itself a collective.
        grads = torch.autograd.grad(terms[term], params, retain_graph=True, allow_unused=True)
        result["values"][term] = float(terms[term].detach())
        result["grads"][term] = {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, params, grads)}
    result["logged"] = mean_across_ranks(terms)
    del terms

    half = per_rank // 2
    micro = [{k: v[i : i + half] for k, v in local.items()} for i in (0, half)]
    cached = FeatureCache(loss_fn, model).step(micro, model, lambda t: t.backward())
    result["values"]["cache"] = float(cached["loss"])
    result["grads"]["cache"] = {n: torch.zeros_like(p) if p.grad is None else p.grad for n, p in zip(names, params)}
    return result


def main(rank: int, world: int, port: int, text_folder: str, out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    # fp64 shows the formulation is exact; fp32 is what training runs (see the test for tolerances).
    torch.save({str(d): run(rank, world, text_folder, d) for d in (torch.float32, torch.float64)}, out)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
