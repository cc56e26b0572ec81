"""Vectorised negative sampling for edge embeddings, on the training device.

For every positive (u, v) we draw ``k`` corrupted children (u, v') and ``k`` corrupted parents
(u', v) (thesis §5.5; 5 + 5 by default). A corruption is valid when the pair is *not* a closure
edge and not a self pair. Validity is checked on the device: a pair is encoded as u·N + v and
looked up with ``torch.searchsorted`` in the sorted codes of the closure (N = 82k, |closure| =
660k: 5.3 MB of int64, one binary search per candidate).

Sampling is rejection-based: all candidates are drawn at once, invalid ones are redrawn for
``max_rounds`` rounds. Strategies:

* ``uniform``: the replacement node is uniform over all nodes.
* ``per_level`` (thesis "pick-per-level"): pass i of a side draws from level
  (i + o) mod (L + 1), slot L meaning any node, with o a random rotation per positive and side.
  With k = L + 1 (ETHEC: 4 levels, k = 5) every positive gets one corruption per level plus one
  unrestricted, as in the published code (which uses o = 0); the rotation keeps k < L + 1 from
  only ever corrupting with the top levels. Hard negatives from the same level as the kept
  endpoint appear in every batch, instead of 78% leaf corruptions (ETHEC). After half the
  rounds, pairs still invalid fall back to any node (a level can hold no valid node, e.g. a
  tree's single root).

Pairs still invalid after all rounds are returned with ``valid = False`` (callers mask them);
this only happens when (almost) no valid corruption exists, e.g. for u = the root of a tree.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from hpsearch.errors import ConfigError

Strategy = Literal["uniform", "per_level"]
STRATEGIES = ("uniform", "per_level")


class NegativeSampler:
    """Corrupts positive edges; everything lives on ``device``.

    Args:
        num_nodes: N.
        closure: ``[E, 2]`` true (ancestor, descendant) pairs (array or tensor).
        node_level: ``[N]`` depth of every node (needed for ``per_level``).
        strategy: ``uniform`` or ``per_level``.
        negatives_per_side: k; each positive gets 2k candidates, columns ``[0, k)`` are
            (u, v') and ``[k, 2k)`` are (u', v).
        max_rounds: rejection rounds.
        device: where the lookup tables and samples live.
    """

    def __init__(self, num_nodes: int, closure: np.ndarray | Tensor, *,
                 node_level: np.ndarray | Tensor | None = None, strategy: Strategy = "uniform",
                 negatives_per_side: int = 5, max_rounds: int = 16,
                 device: torch.device | str = "cpu") -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"negative strategy must be one of {STRATEGIES}, got {strategy!r}")
        if negatives_per_side < 1:
            raise ConfigError(f"negatives_per_side must be >= 1, got {negatives_per_side}")
        if max_rounds < 1:
            raise ConfigError(f"max_rounds must be >= 1, got {max_rounds}")
        self.n = int(num_nodes)
        self.k = int(negatives_per_side)
        self.strategy = strategy
        self.max_rounds = int(max_rounds)
        self.device = torch.device(device)
        c = torch.as_tensor(closure, dtype=torch.int64).reshape(-1, 2).to(self.device)
        self.codes = torch.unique(c[:, 0] * self.n + c[:, 1])  # sorted
        # slot s of pass i: nodes pool[start[s] : start[s] + size[s]]; last slot = all nodes
        if strategy == "per_level":
            if node_level is None:
                raise ConfigError("negative strategy 'per_level' needs node levels")
            lvl = torch.as_tensor(node_level, dtype=torch.int64).to(self.device)
            order = torch.argsort(lvl, stable=True)
            sizes = torch.bincount(lvl, minlength=int(lvl.max()) + 1)
        else:
            order = torch.zeros(0, dtype=torch.int64, device=self.device)
            sizes = torch.zeros(0, dtype=torch.int64, device=self.device)
        self.pool = torch.cat([order, torch.arange(self.n, device=self.device)])
        self.sizes = torch.cat([sizes, torch.tensor([self.n], device=self.device)])
        self.starts = torch.cumsum(self.sizes, 0) - self.sizes
        self.n_slots = len(self.sizes)

    # ------------------------------------------------------------------ lookup
    def is_edge(self, u: Tensor, v: Tensor) -> Tensor:
        """Elementwise: is (u, v) a closure edge?"""
        q = u * self.n + v
        if len(self.codes) == 0:
            return torch.zeros_like(q, dtype=torch.bool)
        pos = torch.searchsorted(self.codes, q).clamp_max(len(self.codes) - 1)
        return self.codes[pos] == q

    def _draw(self, slots: Tensor, generator: torch.Generator | None) -> Tensor:
        r = torch.rand(slots.shape, generator=generator, device=self.device)
        size = self.sizes[slots]
        off = (r * size).long().clamp_max(size - 1)
        return self.pool[self.starts[slots] + off]

    # ------------------------------------------------------------------ sampling
    def sample(self, pos: Tensor, generator: torch.Generator | None = None
               ) -> tuple[Tensor, Tensor]:
        """Negatives for positives ``pos [P, 2]``.

        Returns:
            ``(neg [P, 2k, 2], valid [P, 2k])``: int64 pairs and a bool mask of the ones that
            are true negatives (masked ones must not enter the loss).
        """
        pos = pos.to(self.device)
        p = len(pos)
        u = pos[:, :1].expand(p, self.k)
        v = pos[:, 1:].expand(p, self.k)
        any_slot = self.n_slots - 1
        if any_slot == 0:  # uniform: one slot, all nodes
            slots = torch.zeros(p, 2 * self.k, dtype=torch.int64, device=self.device)
        else:
            rot = torch.randint(0, self.n_slots, (p, 2), generator=generator, device=self.device)
            passes = torch.arange(self.k, device=self.device)
            slots = torch.cat([(passes + rot[:, :1]) % self.n_slots,
                               (passes + rot[:, 1:]) % self.n_slots], dim=1)  # [P, 2k]
        fixed = torch.cat([u, v], dim=1)  # the kept endpoint
        corrupt_child = torch.zeros(p, 2 * self.k, dtype=torch.bool, device=self.device)
        corrupt_child[:, :self.k] = True
        cand = self._draw(slots, generator)
        ok = self._valid(fixed, cand, corrupt_child)
        for rnd in range(1, self.max_rounds):
            if bool(ok.all()):
                break
            if rnd == self.max_rounds // 2 and any_slot > 0:
                slots = torch.where(ok, slots, torch.full_like(slots, any_slot))
            new = self._draw(slots, generator)
            cand = torch.where(ok, cand, new)
            ok = self._valid(fixed, cand, corrupt_child)
        parent = torch.where(corrupt_child, fixed, cand)
        child = torch.where(corrupt_child, cand, fixed)
        return torch.stack([parent, child], dim=-1), ok

    def _valid(self, fixed: Tensor, cand: Tensor, corrupt_child: Tensor) -> Tensor:
        parent = torch.where(corrupt_child, fixed, cand)
        child = torch.where(corrupt_child, cand, fixed)
        return (parent != child) & ~self.is_edge(parent, child)
