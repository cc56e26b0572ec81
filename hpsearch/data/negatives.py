"""Vectorised negative sampling for edge embeddings, on the training device.

For every positive (u, v) we draw ``k`` corrupted children (u, v') and ``k`` corrupted parents
(u', v) (thesis §5.5; 5 + 5 by default). A corruption is valid when the pair is *not* a closure
edge and not a self pair. Validity is checked on the device: a pair is encoded as u·N + v and
looked up with ``torch.searchsorted`` in the sorted codes of the closure (N = 82k, |closure| =
660k: 5.3 MB of int64, one binary search per candidate).

Sampling is rejection-based: all candidates are drawn at once, then only the invalid ones are
redrawn, for up to ``max_rounds`` rounds (so a round costs in proportion to what is still
invalid, not to all P·2k candidates). Strategies:

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

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from hpsearch.errors import ConfigError, DataError

Strategy = Literal["uniform", "per_level"]
STRATEGIES = ("uniform", "per_level")


def closure_codes(closure: np.ndarray | Tensor, n: int, device: torch.device) -> Tensor:
    """Sorted ``u·n + v`` codes of the ``[E, 2]`` pairs (for :func:`is_coded`)."""
    c = torch.as_tensor(closure, dtype=torch.int64).reshape(-1, 2).to(device)
    return torch.unique(c[:, 0] * n + c[:, 1])


def is_coded(codes: Tensor, q: Tensor) -> Tensor:
    """Elementwise: is code ``q`` in the sorted ``codes``? (one binary search each)"""
    if len(codes) == 0:
        return torch.zeros_like(q, dtype=torch.bool)
    pos = torch.searchsorted(codes, q).clamp_max(len(codes) - 1)
    return codes[pos] == q


class LevelPools:
    """Nodes grouped for slot draws: slot ``s`` < L draws uniformly from the nodes of level
    ``s``, slot ``any_slot`` = L from all ``n`` nodes (with ``level=None`` that is the only
    slot). Slot s holds ``pool[starts[s] : starts[s] + sizes[s]]``."""

    def __init__(self, n: int, level: np.ndarray | Tensor | None, device: torch.device) -> None:
        if level is not None:
            lvl = torch.as_tensor(level, dtype=torch.int64).to(device)
            order = torch.argsort(lvl, stable=True)
            sizes = torch.bincount(lvl, minlength=int(lvl.max()) + 1)
        else:
            order = torch.zeros(0, dtype=torch.int64, device=device)
            sizes = torch.zeros(0, dtype=torch.int64, device=device)
        self.device = device
        self.pool = torch.cat([order, torch.arange(n, device=device)])
        self.sizes = torch.cat([sizes, torch.tensor([n], device=device)])
        self.starts = torch.cumsum(self.sizes, 0) - self.sizes
        self.any_slot = len(self.sizes) - 1

    def draw(self, slots: Tensor, generator: torch.Generator | None) -> Tensor:
        r = torch.rand(slots.shape, generator=generator, device=self.device)
        size = self.sizes[slots]
        off = (r * size).long().clamp_max(size - 1)
        return self.pool[self.starts[slots] + off]

    def rotated_slots(self, p: int, k: int, generator: torch.Generator | None) -> Tensor:
        """``[P, 2k]`` pick-per-level slots: pass i of a side is slot (i + o) mod (L + 1), o a
        random rotation per positive and side."""
        n_slots = self.any_slot + 1
        rot = torch.randint(0, n_slots, (p, 2), generator=generator, device=self.device)
        passes = torch.arange(k, device=self.device)
        return torch.cat([(passes + rot[:, :1]) % n_slots, (passes + rot[:, 1:]) % n_slots],
                         dim=1)


def reject_and_redraw(slots: Tensor, draw: Callable[[Tensor, Tensor], Tensor],
                      valid: Callable[[Tensor, Tensor], Tensor], *, max_rounds: int,
                      any_slot: int) -> tuple[Tensor, Tensor]:
    """Rejection sampling over flat candidate ``slots [n]``.

    ``draw(slots_subset, idx)`` draws candidates for positions ``idx``; ``valid(idx, cand)``
    says which are acceptable. All positions are drawn once, then only the invalid ones are
    redrawn, for up to ``max_rounds`` rounds in all (a round costs in proportion to what is
    still invalid); from round ``max_rounds // 2`` on they draw from ``any_slot``.

    Returns:
        ``(cand [n], ok [n])``.
    """
    idx = torch.arange(len(slots), device=slots.device)
    cand = draw(slots, idx)
    ok = valid(idx, cand)
    for rnd in range(1, max_rounds):
        bad = torch.nonzero(~ok).squeeze(1)
        if len(bad) == 0:
            break
        s = slots[bad] if rnd < max_rounds // 2 else torch.full_like(bad, any_slot)
        new = draw(s, bad)
        cand[bad] = new
        ok[bad] = valid(bad, new)
    return cand, ok


def corruption_layout(pos: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """For positives ``[P, 2]``: the kept endpoint of each of the 2k corruptions and whether
    the child is the corrupted one (columns ``[0, k)``: (u, v'), ``[k, 2k)``: (u', v)), both
    ``[P, 2k]``."""
    p = len(pos)
    fixed = torch.cat([pos[:, :1].expand(p, k), pos[:, 1:].expand(p, k)], dim=1)
    corrupt_child = torch.zeros(p, 2 * k, dtype=torch.bool, device=pos.device)
    corrupt_child[:, :k] = True
    return fixed, corrupt_child


def as_pairs(fixed: Tensor, cand: Tensor, corrupt_child: Tensor) -> tuple[Tensor, Tensor]:
    """(parent, child) of corruptions: the candidate replaces the child or the parent."""
    return (torch.where(corrupt_child, fixed, cand), torch.where(corrupt_child, cand, fixed))


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
        if strategy == "per_level" and node_level is None:
            raise ConfigError("negative strategy 'per_level' needs node levels")
        self.n = int(num_nodes)
        self.k = int(negatives_per_side)
        self.strategy = strategy
        self.max_rounds = int(max_rounds)
        self.device = torch.device(device)
        self.codes = closure_codes(closure, self.n, self.device)
        self.pools = LevelPools(self.n, node_level if strategy == "per_level" else None,
                                self.device)

    # ------------------------------------------------------------------ lookup
    def is_edge(self, u: Tensor, v: Tensor) -> Tensor:
        """Elementwise: is (u, v) a closure edge?"""
        return is_coded(self.codes, u * self.n + v)

    # ------------------------------------------------------------------ sampling
    def sample(self, pos: Tensor, generator: torch.Generator | None = None
               ) -> tuple[Tensor, Tensor]:
        """Negatives for positives ``pos [P, 2]``.

        Returns:
            ``(neg [P, 2k, 2], valid [P, 2k])``: int64 pairs and a bool mask of the ones that
            are true negatives (masked ones must not enter the loss).
        """
        pos = pos.to(self.device)
        p, k = len(pos), self.k
        if self.pools.any_slot == 0:  # uniform: one slot, all nodes
            slots = torch.zeros(p, 2 * k, dtype=torch.int64, device=self.device)
        else:
            slots = self.pools.rotated_slots(p, k, generator)
        fixed, corrupt_child = (t.reshape(-1) for t in corruption_layout(pos, k))

        def valid(idx: Tensor, cand: Tensor) -> Tensor:
            parent, child = as_pairs(fixed[idx], cand, corrupt_child[idx])
            return (parent != child) & ~self.is_edge(parent, child)

        cand, ok = reject_and_redraw(slots.reshape(-1),
                                     lambda s, idx: self.pools.draw(s, generator), valid,
                                     max_rounds=self.max_rounds, any_slot=self.pools.any_slot)
        parent, child = as_pairs(fixed, cand, corrupt_child)
        return (torch.stack([parent, child], dim=-1).reshape(p, 2 * k, 2),
                ok.reshape(p, 2 * k))


class JointNegativeSampler:
    """Corrupts label–label and label → image positives without ever producing an
    image–image pair; everything lives on ``device``.

    Node ids: labels ``0..N-1``, images ``N..N+M-1``.

    Args:
        num_labels: N.
        closure: ``[E, 2]`` label (ancestor, descendant) pairs.
        label_level: ``[N]`` depth of every label.
        image_labels: ``[M, L]`` *global* label ids of every training image's root path.
        strategy: how a label endpoint is replaced: ``per_level`` (pass i of a side from level
            (i + o) mod (L + 1), o a random rotation per positive and side, slot L = any
            label), ``same_level`` (the replaced label's level) or ``uniform`` (any label).
        negatives_per_side: k; columns ``[0, k)`` are (u, v'), ``[k, 2k)`` are (u', v).
        max_rounds: rejection rounds; after half of them label slots fall back to any label.
        device: where tables and samples live.
        image_slot: ``per_level`` only: add slot L + 1, whose replacement is a training image
            (thesis §5.6: "nodes from each level in the hierarchy including the images (the
            lowest level)"). A label-label positive then also gets (u, image) and
            (image, v) negatives (the published oe.py pass 4); where an image would pair with
            the kept image of a label → image positive, the slot draws any label instead.
        image_fraction: None = the default rule (an image endpoint is replaced by an image, a
            label endpoint by a label). r in [0, 1]: every replacement is an image with
            probability r, else a label of ``strategy`` (thesis §6.2.4's 50:50 images:labels
            is r = 0.5); a replacement that would pair two images is a label. The choice is
            made once per candidate and kept through the redraws, so rejection does not bias
            the ratio.

    Image-image pairs are never produced; an image is a parent only in an (image, label)
    negative of ``image_slot`` / ``image_fraction`` (nothing lies below an image, so such a
    pair is never a positive).
    """

    def __init__(self, num_labels: int, closure: np.ndarray | Tensor, label_level: np.ndarray
                 | Tensor, image_labels: np.ndarray | Tensor, *, strategy: str = "per_level",
                 negatives_per_side: int = 5, max_rounds: int = 16,
                 device: torch.device | str = "cpu", image_slot: bool = False,
                 image_fraction: float | None = None) -> None:
        if strategy not in ("per_level", "same_level", "uniform"):
            raise ConfigError(f"joint negative_strategy must be per_level, same_level or "
                              f"uniform, got {strategy!r}")
        if negatives_per_side < 1 or max_rounds < 1:
            raise ConfigError(f"negatives_per_side and max_rounds must be >= 1, got "
                              f"{negatives_per_side}, {max_rounds}")
        if image_slot and strategy != "per_level":
            raise ConfigError(f"image_slot is a pick-per-level slot; it needs strategy "
                              f"'per_level', got {strategy!r}")
        if image_fraction is not None and not 0.0 <= image_fraction <= 1.0:
            raise ConfigError(f"image_fraction must lie in [0, 1] (or be None), got "
                              f"{image_fraction}")
        if image_slot and image_fraction is not None:
            raise ConfigError("image_slot and image_fraction are two rules for the same "
                              "choice; set one of them")
        self.image_slot = bool(image_slot)
        self.image_fraction = None if image_fraction is None else float(image_fraction)
        self.device = torch.device(device)
        self.n = int(num_labels)
        self.k = int(negatives_per_side)
        self.strategy = strategy
        self.max_rounds = int(max_rounds)
        self.codes = closure_codes(closure, self.n, self.device)
        self.level = torch.as_tensor(label_level, dtype=torch.int64).to(self.device)
        self.image_labels = torch.as_tensor(image_labels, dtype=torch.int64).to(self.device)
        self.m = int(self.image_labels.shape[0])  # [M, L] global label ids
        if self.m == 0:
            raise DataError("the joint embedding needs at least one training image")
        self.pools = LevelPools(self.n, self.level, self.device)
        self.any_slot = self.pools.any_slot  # last slot: every label

    # ------------------------------------------------------------------ lookup
    def is_positive(self, u: Tensor, v: Tensor) -> Tensor:
        """Elementwise: is (u, v) an edge of the training graph's closure? Image → anything
        is never one."""
        u_lab, v_img = u < self.n, v >= self.n
        uc = u.clamp(0, self.n - 1)
        ll = is_coded(self.codes, uc * self.n + v.clamp(0, self.n - 1))
        img = (v - self.n).clamp(0, self.m - 1)
        li = self.image_labels[img, self.level[uc]] == uc  # u on the image's root path
        return u_lab & torch.where(v_img, li, ll)

    def _images(self, shape: torch.Size, generator: torch.Generator | None) -> Tensor:
        r = torch.rand(shape, generator=generator, device=self.device)
        return self.n + (r * self.m).long().clamp_max(self.m - 1)

    def _rotated_slots_with_images(self, p: int, k: int, generator: torch.Generator | None
                                   ) -> Tensor:
        """``[P, 2k]`` slots over the L levels, any label (L) and images (L + 1): pass i of a
        side is slot (i + o) mod (L + 2), o a random rotation per positive and side."""
        n_slots = self.any_slot + 2
        rot = torch.randint(0, n_slots, (p, 2), generator=generator, device=self.device)
        passes = torch.arange(k, device=self.device)
        return torch.cat([(passes + rot[:, :1]) % n_slots, (passes + rot[:, 1:]) % n_slots],
                         dim=1)

    # ------------------------------------------------------------------ sampling
    def sample(self, pos: Tensor, generator: torch.Generator | None = None
               ) -> tuple[Tensor, Tensor]:
        """Negatives for positives ``pos [P, 2]`` (parent a label, child a label or image).

        Returns:
            ``(neg [P, 2k, 2], valid [P, 2k])``.
        """
        pos = pos.to(self.device)
        p, k = len(pos), self.k
        fixed, corrupt_child = corruption_layout(pos, k)
        replaced = torch.cat([pos[:, 1:].expand(p, k), pos[:, :1].expand(p, k)], dim=1)
        kept_image = (fixed >= self.n).reshape(-1)
        if self.strategy == "per_level" and self.image_slot:
            slots = self._rotated_slots_with_images(p, k, generator)
        elif self.strategy == "per_level":
            slots = self.pools.rotated_slots(p, k, generator)
        elif self.strategy == "same_level":
            slots = self.level[replaced.clamp_max(self.n - 1)]
        else:
            slots = torch.full((p, 2 * k), self.any_slot, dtype=torch.int64, device=self.device)
        fixed, corrupt_child = fixed.reshape(-1), corrupt_child.reshape(-1)
        slots = slots.reshape(-1)
        if self.image_slot:
            image_slot = slots == self.any_slot + 1
            as_image = ((replaced >= self.n).reshape(-1) | image_slot) & ~kept_image
            slots = torch.where(image_slot, torch.full_like(slots, self.any_slot), slots)
        elif self.image_fraction is not None:
            r = torch.rand(slots.shape, generator=generator, device=self.device)
            as_image = (r < self.image_fraction) & ~kept_image
        else:
            as_image = (replaced >= self.n).reshape(-1)  # image endpoints are replaced by images

        def draw(s: Tensor, idx: Tensor) -> Tensor:
            lab = self.pools.draw(s, generator)
            img = self._images(s.shape, generator)
            return torch.where(as_image[idx], img, lab)

        def valid(idx: Tensor, cand: Tensor) -> Tensor:
            parent, child = as_pairs(fixed[idx], cand, corrupt_child[idx])
            return ((parent != child) & ((parent < self.n) | (child < self.n))
                    & ~self.is_positive(parent, child))

        cand, ok = reject_and_redraw(slots, draw, valid,
                                     max_rounds=self.max_rounds, any_slot=self.any_slot)
        parent, child = as_pairs(fixed, cand, corrupt_child)
        return (torch.stack([parent, child], dim=-1).reshape(p, 2 * k, 2),
                ok.reshape(p, 2 * k))
