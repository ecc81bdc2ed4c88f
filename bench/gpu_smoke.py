"""GPU smoke benchmark: MM-CLIP train steps (EfficientNet-B2, 760x480, bf16) vs a pure timm forward/backward.

Needs only torch (+ torchvision), timm and transformers: no Ray, DeepSpeed, WebDataset or data. Our model and
loss code is imported directly and fed a synthetic loader-shaped batch (``model.debug.random_batch``); the
text encoder is a randomly initialised BERT-base (Bio_ClinicalBERT's shape) built locally, so nothing is
downloaded. The settings are those of ``launch/configs/vindr_efficientnet_b2.yaml`` (model, data, loss),
snapshotted in ``bench/gpu_smoke_config.json`` so that the script also runs where pydantic (our config tree's
validator) is not installed; a test keeps the snapshot equal to the YAML.

Prints, per GPU: breasts/s and images/s of a full MM-CLIP step (forward both views + text, Eq. 10 loss,
backward, AdamW step) next to the same backbone alone in timm (forward + backward + AdamW on the same
images), and the peak memory of each.

    bash bench/gpu_smoke.sh                        # on a GPU machine, < 3 min
    python bench/gpu_smoke.py --cpu-dry-run        # tiny sizes on CPU: checks the script, times nothing real
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = REPO / "bench" / "gpu_smoke_config.json"
SOURCE_CONFIG = REPO / "launch" / "configs" / "vindr_efficientnet_b2.yaml"
SECTIONS = ("model", "data", "loss")
sys.path.insert(0, str(REPO))


def snapshot_config() -> dict[str, dict[str, Any]]:
    """The model/data/loss sections of the production EfficientNet-B2 config, resolved (needs pydantic)."""
    from mmclip_dist.config import load_config

    tree = load_config(SOURCE_CONFIG).model_dump(mode="json")
    return {section: tree[section] for section in SECTIONS}


def load_sections() -> dict[str, Any]:
    """Config sections as attribute objects: validated ``Config`` sections when pydantic is there, else
    the JSON snapshot as plain namespaces (the model and loss code only read attributes)."""
    snapshot = json.loads(SNAPSHOT.read_text())
    try:
        from mmclip_dist.config import DataConfig, LossConfig, ModelConfig
    except ImportError as err:
        print(f"(config tree unavailable: {err}; using the snapshot {SNAPSHOT.name} as plain attributes)")
        # mmclip_dist.model / .losses import these names for type hints only.
        shim = types.ModuleType("mmclip_dist.config")
        for name in ("Config", "DataConfig", "LossConfig", "ModelConfig", "TrainConfig"):
            setattr(shim, name, types.SimpleNamespace)
        sys.modules["mmclip_dist.config"] = shim
        return {
            s: types.SimpleNamespace(**{k: tuple(v) if isinstance(v, list) else v for k, v in snapshot[s].items()})
            for s in SECTIONS
        }
    classes = {"model": ModelConfig, "data": DataConfig, "loss": LossConfig}
    return {s: classes[s].model_validate(snapshot[s]) for s in SECTIONS}


def _timed(step: Any, warmup: int, steps: int, device: torch.device) -> float:
    """Median seconds of ``steps`` calls after ``warmup`` (cuDNN autotuning, allocator growth)."""
    times = []
    for index in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_gib(device: torch.device) -> float:
    if device.type != "cuda":
        return float("nan")
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro-batch", type=int, default=8, help="breasts per GPU per step (2 images each)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="run on CPU with a tiny backbone, 64x48 images and a tiny BERT (checks the script)",
    )
    args = parser.parse_args()

    cfg = load_sections()
    from mmclip_devtools.toy_models import build_debug_text_encoder, random_batch
    from mmclip_dist.losses import MMCLIPLoss
    from mmclip_dist.model import MMCLIP

    cfg["model"].backbone_weights = ""  # random init: same compute, no download
    if args.cpu_dry_run:
        device = torch.device("cpu")
        cfg["model"].backbone, cfg["data"].image_size = "test_efficientnet", (64, 48)
        bert = {"hidden_size": 32, "layers": 1, "heads": 2}
        args.micro_batch, args.warmup, args.steps = min(args.micro_batch, 2), 1, 2
        dtype = torch.bfloat16  # the production precision on CPU too (RoIAlign runs in fp32 inside)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device visible; use --cpu-dry-run to check the script on CPU")
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        bert = {"hidden_size": 768, "layers": 12, "heads": 12}  # Bio_ClinicalBERT's (BERT-base) shape
        dtype = torch.bfloat16
    height, width = cfg["data"].image_size

    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        cfg["model"].text_encoder = str(build_debug_text_encoder(Path(tmp) / "bert", **bert))
        cfg["model"].tokenizer = ""
        torch.manual_seed(0)
        model = MMCLIP.from_config(cfg["model"], cfg["data"])
    model = model.to(device=device, dtype=dtype)  # bf16 weights, like DeepSpeed's bf16 mode
    loss_fn = MMCLIPLoss(cfg["loss"])
    batch = random_batch(
        args.micro_batch,
        (height, width),
        cfg["data"].max_rois,
        cfg["data"].max_text_len,
        vocab_size=len(model.text.backbone.get_input_embeddings().weight),
        seed=0,
    )
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    for key in ("images", "masks"):
        batch[key] = batch[key].to(dtype)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def mmclip_step() -> None:
        loss = loss_fn(model(batch), model)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    import timm

    backbone = timm.create_model(cfg["model"].backbone, pretrained=False, num_classes=0).to(device, dtype)
    images = batch["images"].flatten(0, 1).expand(-1, 3, -1, -1).contiguous()  # both views, as RGB
    timm_optimizer = torch.optim.AdamW(backbone.parameters(), lr=1e-6)

    def timm_step() -> None:
        backbone(images).float().pow(2).mean().backward()
        timm_optimizer.step()
        timm_optimizer.zero_grad(set_to_none=True)

    _peak_gib(device)
    ours = _timed(mmclip_step, args.warmup, args.steps, device)
    ours_peak = _peak_gib(device)
    optimizer.state.clear()  # free MM-CLIP's Adam moments before measuring timm's peak
    pure = _timed(timm_step, args.warmup, args.steps, device)
    pure_peak = _peak_gib(device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    b = args.micro_batch
    print(
        f"\n{name}: {cfg['model'].backbone} {height}x{width} {str(dtype).removeprefix('torch.')}, {b} breasts = {2 * b} images per step, "
        f"median of {args.steps} steps after {args.warmup} warm-up"
    )
    print(
        f"MM-CLIP step (visual+text+loss+AdamW) {b / ours:8.1f} breasts/s  {2 * b / ours:8.1f} images/s  "
        f"peak {ours_peak:.1f} GiB"
    )
    print(
        f"timm {cfg['model'].backbone} fwd+bwd+AdamW   {b / pure:8.1f} breasts/s  {2 * b / pure:8.1f} images/s  "
        f"peak {pure_peak:.1f} GiB"
    )
    print(f"MM-CLIP / pure backbone step time: {ours / pure:.2f}")
    print(
        json.dumps(
            {
                "device": name,
                "backbone": cfg["model"].backbone,
                "image_size": [height, width],
                "micro_batch": b,
                "mmclip_step_s": ours,
                "timm_step_s": pure,
                "mmclip_images_per_s": 2 * b / ours,
                "timm_images_per_s": 2 * b / pure,
            }
        )
    )


if __name__ == "__main__":
    main()
