"""Poincaré-embedding pre-training, the initialisation of hyperbolic cones (Ganea et al. 2018,
§5: "we initialise with Poincaré embeddings"; dalab/hyperbolic_cones ``all.py``).

Nickel & Kiela 2017, "Poincaré Embeddings for Learning Hierarchical Representations", eq. 6:
for a positive (u, v) and corrupted children v'_1..v'_k (non-edges of the closure),

    L(u, v) = −log( exp(−d(u, v)) / Σ_{w ∈ {v, v'_1..v'_k}} exp(−d(u, w)) ),

d the Poincaré distance (eq. 2.7), optimised with RSGD; the first ``burn_in`` epochs use
lr/10. Init U(−1e-4, 1e-4). Differences from the reference: negatives are uniform from the
start (no unigram^0.75 burn-in sampling) and are rejected against the full closure, like the
cones' own negatives.
"""

from __future__ import annotations

import geoopt
import numpy as np
import torch
from torch import Tensor

from hpsearch.data.negatives import NegativeSampler
from hpsearch.errors import NonFiniteLossError
from hpsearch.geometry import ConeBall, dist


def poincare_pretrain(train: np.ndarray, num_nodes: int, dim: int, *, closure: np.ndarray,
                      epochs: int = 100, lr: float = 0.03, burn_in: int = 20,
                      negatives: int = 10, batch_size: int = 10,
                      generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """Train Poincaré embeddings on the ``train`` edges; returns ``[num_nodes, dim]``."""
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
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr / 10 if epoch < burn_in else lr
        perm = torch.randperm(len(pos_all), generator=g, device=device)
        pos = pos_all[perm]
        neg, ok = sampler.sample(pos, generator=g)
        neg, ok = neg[:, :negatives], ok[:, :negatives]  # corrupted children (u, v')
        for s in range(0, len(pos), batch_size):
            p, n, m = pos[s:s + batch_size], neg[s:s + batch_size], ok[s:s + batch_size]
            u = emb[p[:, 0]].unsqueeze(1)
            cand = torch.cat([p[:, 1:], n[..., 1]], dim=1)  # [b, 1 + k], true child first
            logits = -dist(u, emb[cand])
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
