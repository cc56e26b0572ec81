"""One training epoch of an edge-embedding model (label-only and joint experiments)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class EpochStats:
    mean_loss: float  # summed loss / number of positives
    steps: int  # optimizer steps taken
    positives: int
    valid_negative_fraction: float  # corruptions that are true negatives (the rest masked)


def margin_epoch(train_pos: Tensor, sampler: object,
                 loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
                 optimizers: Sequence[torch.optim.Optimizer], params: Sequence[nn.Parameter], *,
                 batch_size: int, grad_clip: float | None,
                 generator: torch.Generator) -> EpochStats:
    """Shuffle the positives, draw every negative of the epoch at once on the device
    (``sampler.sample(pos, generator) -> (neg [P, 2k, 2], ok [P, 2k])``), then step all
    ``optimizers`` on ``loss_fn(pos_batch, neg_batch, ok_batch)`` batch by batch, clipping
    the global gradient norm of ``params`` to ``grad_clip`` when given. The loss is the margin
    loss of thesis eq. 2.3, Σ E(pos) + Σ max(0, α − E(neg)), built by ``loss_fn``."""
    perm = torch.randperm(len(train_pos), generator=generator, device=train_pos.device)
    pos = train_pos[perm]
    neg, ok = sampler.sample(pos, generator=generator)  # type: ignore[attr-defined]
    total = torch.zeros((), dtype=torch.float64, device=train_pos.device)
    steps = 0
    for s in range(0, len(pos), batch_size):
        loss = loss_fn(pos[s:s + batch_size], neg[s:s + batch_size], ok[s:s + batch_size])
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        for o in optimizers:
            o.step()
        steps += 1
        total += loss.detach()
    return EpochStats(float(total) / max(len(pos), 1), steps, len(pos),
                      float(ok.float().mean()) if ok.numel() else 1.0)
