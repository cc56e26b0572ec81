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

:func:`param_groups` splits a model's trained parameters by ``optim.weight_decay_scope`` into a
decayed and an undecayed group (``all`` keeps the single group of before, so old optimizer
states still load).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import geoopt
import torch
from torch import nn

from hpsearch.config import OptimConfig
from hpsearch.errors import ConfigError

EUCLIDEAN = ("sgd", "adam", "adamw")
RIEMANNIAN = ("rsgd", "riemannian_adam")
ALL = (*EUCLIDEAN, *RIEMANNIAN, "adam_expmap0")
WEIGHT_DECAY_SCOPES = ("all", "kernels", "head")
_KERNEL_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)

ParamGroups = list[dict[str, Any]]


def param_groups(model: nn.Module, weight_decay: float, scope: str) -> ParamGroups:
    """The trained parameters of ``model`` (``requires_grad``) as optimizer param groups.

    ``all``: one group, decayed by the optimizer's ``weight_decay``. ``kernels``: the weights of
    every conv / linear layer decay, biases and norm-layer parameters do not (what a Keras
    ``kernel_regularizer`` on every layer does, as in Barz & Denzler's CIFAR networks).
    ``head``: only the weights of ``model.head``'s conv / linear layers decay.

    Keras' ``l2(λ)`` adds λ·||w||² to the loss, a gradient 2λ·w: it equals SGD
    ``weight_decay`` = 2λ (their ResNet: λ = 2e-4, Plain-11 and the classifier: λ = 5e-4).
    Groups are ``[decayed, undecayed]`` with an explicit ``weight_decay`` each (an empty one
    is left out).
    """
    trained = [p for p in model.parameters() if p.requires_grad]
    if scope == "all":
        return [{"params": trained, "weight_decay": weight_decay}]
    if scope not in WEIGHT_DECAY_SCOPES:
        raise ConfigError(f"optim.weight_decay_scope={scope!r}; allowed: "
                          f"{', '.join(WEIGHT_DECAY_SCOPES)}")
    root = model
    if scope == "head":
        root = getattr(model, "head", None)
        if not isinstance(root, nn.Module):
            raise ConfigError(f"optim.weight_decay_scope=head: {type(model).__name__} has no "
                              "head module; use weight_decay_scope=all or kernels")
    kernels = {id(m.weight) for m in root.modules()
               if isinstance(m, _KERNEL_LAYERS) and m.weight.requires_grad}
    if weight_decay > 0 and not kernels:
        raise ConfigError(f"optim.weight_decay_scope={scope}: no trained conv / linear weight "
                          "to decay; use weight_decay_scope=all or optim.weight_decay=0")
    decayed = [p for p in trained if id(p) in kernels]
    rest = [p for p in trained if id(p) not in kernels]
    groups = [{"params": decayed, "weight_decay": weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(params: Iterable[nn.Parameter] | ParamGroups, name: str, *, lr: float,
                    momentum: float = 0.0, weight_decay: float = 0.0,
                    nesterov: bool = False) -> torch.optim.Optimizer:
    """Optimizer ``name`` (one of :data:`ALL`) over ``params`` (parameters, or param groups
    from :func:`param_groups`, whose own ``weight_decay`` wins over the argument)."""
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


def _require_manifold(params: list, name: str) -> None:
    flat = [q for p in params for q in (p["params"] if isinstance(p, dict) else [p])]
    if not all(isinstance(p, geoopt.ManifoldParameter) for p in flat):
        raise ConfigError(f"optimizer {name!r} needs ball parameters (geoopt.ManifoldParameter);"
                          " use it with the hyperbolic_cone family")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig
                    ) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-epoch schedule from ``optim.schedule``: none, step (×0.1 every ``step_size``),
    cosine to 0 over ``epochs``, or SGDR warm restarts.

    SGDR (Loshchilov & Hutter 2017, eq. 5), torch's ``CosineAnnealingWarmRestarts`` stepped
    once per epoch like Barz & Denzler's Keras callback: in epoch t,

        η_t = η_min + (η_max − η_min)·(1 + cos(π·T_cur / T_i))/2,

    η_max = ``lr``, η_min = ``sgdr_eta_min``, T_0 = ``sgdr_period``, T_{i+1} = T_i·``sgdr_mult``
    and T_cur = the epochs since the last restart (0 at a restart). Their callback differs by
    one in each cycle: it uses T_cur + 1 from a cycle's second epoch on (skipping T_cur = 1,
    ending each cycle at η_min); torch ends one step above it. Their recipe: η_max 0.1, η_min
    1e-6, T_0 12, T_mult 2, 5 cycles = 372 epochs, restarts after epochs 12, 36, 84 and 180.
    """
    if cfg.schedule == "none":
        return None
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=0.1)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.schedule == "sgdr":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=cfg.sgdr_period, T_mult=cfg.sgdr_mult, eta_min=cfg.sgdr_eta_min)
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
