"""What the two edge-embedding tasks share (label-only and joint): one margin-loss epoch and
the cached all-pairs graph reconstruction of a label table."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hpsearch.metrics.edges import embedding_reconstruction


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


class ReconstructionCache:
    """Reconstruction of the whole label graph from a label table (thesis §6.1.1: every ordered
    label pair scored, the threshold chosen on that set), recomputed only when the table has
    changed since the last call (keyed by the optimizer step count: val and test of one epoch
    share one computation).

    Args:
        max_nodes: above this many labels the N² energies are skipped (``recon_skipped``).
        chunk_elems: energies (× dim) per block of rows, bounding the memory of one block.
    """

    def __init__(self, max_nodes: int, chunk_elems: int) -> None:
        self.max_nodes, self.chunk_elems = int(max_nodes), int(chunk_elems)
        self._cache: tuple[int, dict[str, float]] | None = None

    def clear(self) -> None:
        self._cache = None

    @torch.no_grad()
    def __call__(self, steps: int, energy: Callable[[Tensor, Tensor], Tensor],
                 table: Callable[[], Tensor], closure: Tensor, basic: Tensor
                 ) -> dict[str, float]:
        """Metrics of ``embedding_reconstruction`` for the label embeddings ``table()``."""
        if self._cache is not None and self._cache[0] == steps:
            return self._cache[1]
        emb = table()
        if len(emb) > self.max_nodes or len(closure) == 0:  # too large, or no label edges
            out = {"recon_skipped": 1.0}
        else:
            out = embedding_reconstruction(energy, emb, closure, basic,
                                           chunk_elems=self.chunk_elems)
        self._cache = (steps, out)
        return out
