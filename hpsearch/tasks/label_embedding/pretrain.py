"""Poincaré-embedding pre-training, the initialisation of hyperbolic cones (Ganea et al. 2018,
§5: "we initialise with Poincaré embeddings"; dalab/hyperbolic_cones ``all.py``).

Nickel & Kiela 2017, "Poincaré Embeddings for Learning Hierarchical Representations", eq. 6:
for a positive (u, v) (v is-a u) one endpoint is kept and the other replaced by k corrupted
nodes w'_1..w'_k (non-edges of the closure); with ``corrupt="parent"`` (the default, Nickel &
Kiela's code: the hyponym v is kept and its hypernym replaced)

    L(u, v) = −log( exp(−d(u, v)) / Σ_{w ∈ {u, u'_1..u'_k}} exp(−d(w, v)) ),

and with ``corrupt="child"`` the parent u is kept and the candidates are {v, v'_1..v'_k}.
d is the Poincaré distance (eq. 2.7), optimised with RSGD; the first ``burn_in`` epochs use
lr/10. Init U(−1e-4, 1e-4).

Why the side matters: with corrupted parents, a hypernym is the true candidate of every one of
its descendants and is pulled towards all of them, so it settles near the origin and the norm
grows with depth (what entailment cones need: a child must lie *outside* its parent, inside the
parent's cone). With corrupted children the parent is the anchor that is pushed away from
random nodes in every term: on the 120-node tree L = 4, b = 3 (25 % non-basic edges, d = 5,
100 epochs, seed 0) the top level then ends up *farthest* from the origin (mean norms by depth
0.92 / 0.85 / 0.82 / 0.81, parent nearer the origin than its child for 11 % of the closure
edges) against 0.59 / 0.74 / 0.81 / 0.81 and 92 % with corrupted parents
(results/label_sweeps.md §1).

Differences from the reference: negatives are uniform from the start (no unigram^0.75 sampling)
and are rejected against the full closure, like the cones' own negatives.
"""

from __future__ import annotations

from typing import Literal

import geoopt
import numpy as np
import torch
from torch import Tensor

from hpsearch.data.negatives import NegativeSampler
from hpsearch.errors import ConfigError, NonFiniteLossError
from hpsearch.geometry import ConeBall, dist

Corrupt = Literal["parent", "child"]


def poincare_pretrain(train: np.ndarray, num_nodes: int, dim: int, *, closure: np.ndarray,
                      epochs: int = 100, lr: float = 0.03, burn_in: int = 20,
                      negatives: int = 10, batch_size: int = 10,
                      corrupt: Corrupt = "parent",
                      generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """Train Poincaré embeddings on the ``train`` (parent, child) edges.

    Args:
        corrupt: which endpoint the negatives replace: ``"parent"`` (u', v), Nickel & Kiela's
            code, or ``"child"`` (u, v').

    Returns:
        ``[num_nodes, dim]`` points of the unit ball.
    """
    if corrupt not in ("parent", "child"):
        raise ConfigError(f"poincare_pretrain: corrupt must be 'parent' or 'child', "
                          f"got {corrupt!r}")
    device = torch.device(device)
    g = generator or torch.Generator(device=device)
    ball = ConeBall(0.0, exact=True).to(device)
    # init on the CPU (device-independent values), seeded from g
    seed = int(torch.randint(0, 2**62, (1,), generator=g, device=device))
    cpu = torch.Generator().manual_seed(seed)
    init = (torch.rand(num_nodes, dim, dtype=dtype, generator=cpu) * 2 - 1) * 1e-4
    emb = geoopt.ManifoldParameter(init.to(device), manifold=ball)
    opt = geoopt.optim.RiemannianSGD([emb], lr=lr)
    sampler = NegativeSampler(num_nodes, closure, strategy="uniform",
                              negatives_per_side=negatives, device=device)
    pos_all = torch.as_tensor(train, dtype=torch.int64, device=device)
    # sampler layout: slots [0, k) replace the child (u, v'), slots [k, 2k) the parent (u', v)
    keep, swap, slots = (1, 0, slice(negatives, None)) if corrupt == "parent" else \
        (0, 1, slice(None, negatives))
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr / 10 if epoch < burn_in else lr
        perm = torch.randperm(len(pos_all), generator=g, device=device)
        pos = pos_all[perm]
        neg, ok = sampler.sample(pos, generator=g)
        neg, ok = neg[:, slots, swap], ok[:, slots]  # [P, k] replacement nodes, validity
        for s in range(0, len(pos), batch_size):
            p, n, m = pos[s:s + batch_size], neg[s:s + batch_size], ok[s:s + batch_size]
            anchor = emb[p[:, keep]].unsqueeze(1)  # [b, 1, d]
            cand = torch.cat([p[:, swap:swap + 1], n], dim=1)  # [b, 1 + k], true node first
            logits = -dist(anchor, emb[cand])
            mask = torch.cat([torch.ones_like(m[:, :1]), m], dim=1)
            logits = logits.masked_fill(~mask, float("-inf"))
            loss = torch.nn.functional.cross_entropy(
                logits, torch.zeros(len(p), dtype=torch.int64, device=device), reduction="sum")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if not torch.isfinite(emb).all():
            raise NonFiniteLossError(f"Poincaré pre-training diverged at epoch {epoch} "
                                     f"(lr={lr}); lower model.params.init_lr")
    return emb.detach().clone()
