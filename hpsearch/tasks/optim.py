"""The one optimizer and learning-rate-schedule builder of every task.

Optimizers (``name``):

* ``sgd`` (optionally Nesterov), ``adam``, ``adamw``: torch optimizers (classifier backbones and
  heads, Euclidean label tables, the joint model's image map W).
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

from collections.abc import Iterable

import geoopt
import torch
from torch import nn

from hpsearch.config import OptimConfig
from hpsearch.errors import ConfigError

EUCLIDEAN = ("sgd", "adam", "adamw")
RIEMANNIAN = ("rsgd", "riemannian_adam")
ALL = (*EUCLIDEAN, *RIEMANNIAN, "adam_expmap0")
SGDR_ETA_MIN = 1e-6  # floor of the SGDR cosine (Barz & Denzler's recipe)


def build_optimizer(params: Iterable[nn.Parameter], name: str, *, lr: float,
                    momentum: float = 0.0, weight_decay: float = 0.0,
                    nesterov: bool = False) -> torch.optim.Optimizer:
    """Optimizer ``name`` (one of :data:`ALL`) over ``params``."""
    params = list(params)
    if lr <= 0:
        raise ConfigError(f"learning rate must be > 0, got lr={lr}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=nesterov and momentum > 0)
    if name in ("adam", "adam_expmap0"):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "rsgd":
        _require_manifold(params, name)
        return geoopt.optim.RiemannianSGD(params, lr=lr, momentum=momentum)
    if name == "riemannian_adam":
        _require_manifold(params, name)
        return geoopt.optim.RiemannianAdam(params, lr=lr)
    raise ConfigError(f"unknown optimizer {name!r}; allowed: {', '.join(ALL)}")


def _require_manifold(params: list[nn.Parameter], name: str) -> None:
    if not all(isinstance(p, geoopt.ManifoldParameter) for p in params):
        raise ConfigError(f"optimizer {name!r} needs ball parameters (geoopt.ManifoldParameter);"
                          " use it with the hyperbolic_cone family")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig
                    ) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-epoch schedule from ``optim.schedule``: none, step (×0.1 every ``step_size``),
    cosine to 0 over ``epochs``, or SGDR warm restarts (Loshchilov & Hutter 2017)."""
    if cfg.schedule == "none":
        return None
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=0.1)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.schedule == "sgdr":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=cfg.sgdr_period, T_mult=cfg.sgdr_mult, eta_min=SGDR_ETA_MIN)
    raise ConfigError(f"unknown optim.schedule {cfg.schedule!r}; allowed: none, step, "
                      "cosine, sgdr")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, keeping a resumed run bit-identical.

    torch turns geoopt's int ``step`` into a float32 tensor on load; RiemannianAdam's bias
    correction then rounds differently and a resumed run drifts from the uninterrupted one.
    """
    optimizer.load_state_dict(state)
    if isinstance(optimizer, geoopt.optim.RiemannianAdam):
        for st in optimizer.state.values():
            if isinstance(st.get("step"), torch.Tensor):
                st["step"] = int(st["step"].item())
