"""Optimizers for label-embedding tables (choice = ``model.params.optimizer``).

* ``adam`` / ``sgd``: plain torch optimizers for Euclidean tables (order embeddings, Euclidean
  cones; the thesis used Adam, §5.5).
* ``rsgd``: Riemannian SGD on the Poincaré ball (thesis eq. 2.12-2.15, Ganea et al. 2018):
  ``geoopt.optim.RiemannianSGD`` on a ``ManifoldParameter`` of a :class:`ConeBall`; the
  Euclidean gradient is rescaled by (1/λ_x)² = ((1 − ||x||²)/2)², the step is the exponential
  map (or x + u with ``retraction="first_order"``), then norms are clipped into
  [ε_K + 1e-5, 1 − 1e-5].
* ``riemannian_adam``: ``geoopt.optim.RiemannianAdam`` on the same parameter.
* ``adam_expmap0``: torch Adam on Euclidean parameters w whose embedding is exp_0 of w (with the
  inner-radius offset), thesis §5.6; the model owns that map (mode ``expmap0``).

The optimizer never looks at a manifold: geoopt asks the parameter for it.
"""

from __future__ import annotations

import geoopt
import torch
from torch import nn

from hpsearch.config import OptimConfig
from hpsearch.errors import ConfigError

EUCLIDEAN = ("adam", "sgd")
RIEMANNIAN = ("rsgd", "riemannian_adam")
ALL = (*EUCLIDEAN, *RIEMANNIAN, "adam_expmap0")


def build_optimizer(params: list[nn.Parameter], name: str, *, lr: float,
                    momentum: float = 0.0) -> torch.optim.Optimizer:
    """Optimizer ``name`` over ``params`` (the embedding table)."""
    if lr <= 0:
        raise ConfigError(f"learning rate must be > 0, got lr={lr}")
    if name in ("adam", "adam_expmap0"):
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "rsgd":
        _require_manifold(params, name)
        return geoopt.optim.RiemannianSGD(params, lr=lr, momentum=momentum)
    if name == "riemannian_adam":
        _require_manifold(params, name)
        return geoopt.optim.RiemannianAdam(params, lr=lr)
    raise ConfigError(f"unknown embedding optimizer {name!r}; allowed: {', '.join(ALL)}")


def _require_manifold(params: list[nn.Parameter], name: str) -> None:
    if not all(isinstance(p, geoopt.ManifoldParameter) for p in params):
        raise ConfigError(f"optimizer {name!r} needs ball parameters (geoopt.ManifoldParameter);"
                          " use it with the hyperbolic_cone family")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig
                    ) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-epoch schedule from ``optim.schedule`` (none, step ×0.1, cosine to 0, SGDR)."""
    if cfg.schedule == "none":
        return None
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=0.1)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.schedule == "sgdr":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=cfg.sgdr_period, T_mult=cfg.sgdr_mult, eta_min=1e-6)
    raise ConfigError(f"unknown optim.schedule {cfg.schedule!r}; allowed: none, step, "
                      "cosine, sgdr")
