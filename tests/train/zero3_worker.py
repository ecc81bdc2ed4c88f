"""One process of the ZeRO-3 stale-gradient test (run as a script; not a test module).

``python zero3_worker.py PORT OUT`` trains a two-parameter model under DeepSpeed ZeRO-3 (1 rank, gloo, CPU) with
2 micro-batches per step and SGD at lr 1, so each step's update is exactly minus the gradient DeepSpeed applied.
The scale ``b`` is used only in the second micro-batch, like the logit scales under the feature cache. Saves, per
step, the applied update and the true gradient of every parameter, with and without ``clear_zero3_gradients``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from mmclip_dist.train.zero3_grads import clear_zero3_gradients  # noqa: E402

STEPS = 3
INPUTS = [torch.tensor([[1.0, 2.0]]), torch.tensor([[-3.0, 0.5]])]  # micro-batch 0, 1


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor([0.3, -0.2]))
        self.b = nn.Parameter(torch.tensor([0.7]))

    def forward(self, x: torch.Tensor, use_b: bool) -> torch.Tensor:
        y = (x * self.a).sum()
        return (y * self.b).sum() if use_b else y


def true_grads(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    ref = Toy()
    with torch.no_grad():
        ref.a.copy_(a)
        ref.b.copy_(b)
    for m, x in enumerate(INPUTS):
        (ref(x, use_b=m == 1) ** 2).backward()
    return {name: param.grad.clone() for name, param in ref.named_parameters() if param.grad is not None}


def run(clear: bool) -> list[dict[str, dict[str, torch.Tensor]]]:
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    model = Toy()
    config = {
        "train_batch_size": 2,
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 2,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "gradient_clipping": 0.0,
        "zero_allow_untested_optimizer": True,  # plain SGD: the update is exactly minus the applied gradient
        "steps_per_print": 10**9,
    }
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0), config=config, dist_init_required=False
    )
    params = dict(engine.module.named_parameters())

    def weights() -> dict[str, torch.Tensor]:
        return {n: safe_get_full_fp32_param(p).detach().clone().reshape(p.ds_shape) for n, p in params.items()}

    steps = []
    for _ in range(STEPS):
        before = weights()
        if clear:
            clear_zero3_gradients(engine)
        for m, x in enumerate(INPUTS):
            engine.backward(engine(x, use_b=m == 1) ** 2, scale_wrt_gas=False)
            engine.step()
        after = weights()
        steps.append(
            {"applied": {n: before[n] - after[n] for n in params}, "true": true_grads(before["a"], before["b"])}
        )
    engine.destroy()
    return steps


if __name__ == "__main__":
    port, out = sys.argv[1], sys.argv[2]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    torch.save({"cleared": run(clear=True), "plain": run(clear=False)}, out)
