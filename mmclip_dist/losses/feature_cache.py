"""Micro-batch feature cache (GradCache, Gao et al. 2021): a contrastive batch larger than memory allows.

The contrastive batch is ``world x micro_batch x accumulation_steps``: every micro-batch's rows are
compared with every other's, so plain gradient accumulation (loss per micro-batch) would change the
loss. Instead :meth:`FeatureCache.step`

1. embeds every micro-batch under ``torch.no_grad()``, saving the RNG state before each (dropout masks
   are then reproducible) and restoring the model's buffers afterwards (BatchNorm running statistics
   are updated once per micro-batch, by the replay, as without the cache);
2. concatenates the features, computes the loss over the whole accumulated batch (gathered across
   ranks) and takes its gradient w.r.t. the cached features;
3. replays each micro-batch with its RNG state and backpropagates ``sum(feature * cached_grad)``
   through the caller's ``backward``; for the last micro-batch it instead recomputes the loss with that
   micro-batch's live features (others detached) under the RNG state of step 2, which yields the same
   feature gradient *and* the gradients of the parameters used inside the loss (logit scales, RoI
   matcher) exactly once.

The gradients summed over the ``backward`` calls equal those of one backward through the loss of the
whole accumulated batch. With DeepSpeed pass ``lambda t: engine.backward(t, scale_wrt_gas=False)``:
the loss is already the mean over the accumulated batch, so dividing by the accumulation steps again
would be wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

import torch
from torch import nn

from mmclip_dist.model.mmclip import MMCLIPOutput
from mmclip_dist.rng import RNGState, get_rng_state, set_rng_state


def _float_fields(out: MMCLIPOutput) -> list[str]:
    return [
        f.name for f in fields(out) if getattr(out, f.name) is not None and getattr(out, f.name).is_floating_point()
    ]


class FeatureCache:
    """Exact contrastive loss and gradients over several micro-batches with one micro-batch of activations.

    ``loss_fn(out, model) -> dict`` is an :class:`~mmclip_dist.losses.MMCLIPLoss`; ``model`` is passed to it
    (for the logit scales and RoI matcher) and its buffers are protected during the no-grad pass.
    """

    def __init__(self, loss_fn: Callable[[MMCLIPOutput, Any], dict[str, torch.Tensor]], model: nn.Module) -> None:
        self.loss_fn = loss_fn
        self.model = model

    def step(
        self,
        micro_batches: Sequence[dict[str, Any]],
        forward: Callable[[dict[str, Any]], MMCLIPOutput],
        backward: Callable[[torch.Tensor], None],
    ) -> dict[str, torch.Tensor]:
        """Accumulate the exact gradients of the loss over all ``micro_batches``; returns detached loss terms.

        Every rank must pass the same number of equally sized micro-batches (the loss gathers across ranks).
        """
        if not micro_batches:
            raise ValueError("FeatureCache.step needs at least one micro-batch")
        if len(micro_batches) == 1:
            # Nothing to accumulate: one forward and one backward through the loss is already exact,
            # and skips the no-grad embedding pass and the replay (about a third of the step).
            terms = self.loss_fn(forward(micro_batches[0]), self.model)
            backward(terms["loss"])
            return {k: v.detach() for k, v in terms.items()}

        # (1) no-grad embedding pass, remembering the randomness each micro-batch used.
        buffers = {name: buf.detach().clone() for name, buf in self.model.named_buffers()}
        states: list[RNGState] = []
        cached: list[MMCLIPOutput] = []
        with torch.no_grad():
            for mb in micro_batches:
                states.append(get_rng_state())
                cached.append(forward(mb).detach())
        with torch.no_grad():
            for name, buf in self.model.named_buffers():
                buf.copy_(buffers[name])
        sizes = []
        for c in cached:
            if c.image_embed is None:
                raise ValueError("the model returned no image_embed; the feature cache needs model(batch) outputs")
            sizes.append(c.image_embed.shape[0])

        # (2) loss over the whole accumulated batch; gradient w.r.t. the cached features only.
        full = MMCLIPOutput.cat(cached)
        names = _float_fields(full)
        for name in names:
            getattr(full, name).requires_grad_(True)
        loss_state = get_rng_state()
        terms = self.loss_fn(full, self.model)
        leaves = [getattr(full, name) for name in names]
        grads = torch.autograd.grad(terms["loss"], leaves, allow_unused=True)
        feature_grads = {
            name: (torch.zeros_like(leaf) if g is None else g).split(sizes)
            for name, leaf, g in zip(names, leaves, grads)
        }
        end_state = get_rng_state()
        result = {k: v.detach() for k, v in terms.items()}
        del terms, full, leaves, grads

        # (3) replay each micro-batch with its own randomness and push the cached gradient through it.
        last = len(micro_batches) - 1
        for m, mb in enumerate(micro_batches):
            set_rng_state(states[m])
            live = forward(mb)
            if m < last:
                surrogate = sum((getattr(live, n) * feature_grads[n][m]).sum() for n in names)
                backward(surrogate)
                continue
            mixed = MMCLIPOutput.cat(cached[:last] + [live])
            set_rng_state(loss_state)
            backward(self.loss_fn(mixed, self.model)["loss"])
        set_rng_state(end_state)
        return result
