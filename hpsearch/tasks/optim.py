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

Row-sparse updates (``build_optimizer(..., sparse=True)``; the label-only task's
``model.params.sparse_updates``): the parameter's gradient is a sparse COO tensor holding only
the rows a batch looked up (``F.embedding(..., sparse=True)``), and the optimizer reads, moves
and stores only those rows, as Nickel & Kiela's Poincaré code and Ganea et al.'s cone code do.
The optimizers are geoopt's ``SparseRiemannianSGD`` / ``SparseRiemannianAdam`` (the Euclidean
manifold for plain tensors: ``sgd``, ``adam``, ``adam_expmap0``), with one change of
implementation, not of math (:class:`RowSparseRiemannianAdam`): the duplicate rows of the
gradient are summed with ``unique`` + ``index_add_`` instead of ``coalesce`` +
``index_select``, which cost more than the whole dense step on the CPU (see
results/BENCHMARKS.md). Semantics, against the dense optimizer of the same name:

* ``sgd`` / ``rsgd`` without momentum: the dense step exactly, x ← R_x(−lr·rgrad) on each
  looked-up row (an untouched row has g = 0 and the dense optimizer leaves it too). With
  momentum the buffer is *lazy*: an untouched row's buffer is neither decayed nor applied.
* ``adam`` / ``adam_expmap0`` / ``riemannian_adam``: *lazy* Adam. A row's moments are decayed
  and the row moved only in steps that look it up, while the bias correction 1 − β^t counts
  every step; dense Adam also moves an untouched row by m̂/(√v̂ + ε) of its decaying moments.
  The first step equals the dense one (all moments 0). ε is added to √v̂ as in torch's dense
  Adam (``torch.optim.SparseAdam`` adds it to √v, i.e. ε·√(1 − β₂^t) in dense terms, so it is
  not used).
* no weight decay (``weight_decay > 0`` is refused), no ``adamw``.

:func:`param_groups` splits a model's trained parameters by ``optim.weight_decay_scope`` into a
decayed and an undecayed group (``all`` keeps the single group of before, so old optimizer
states still load).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import geoopt
import torch
from torch import Tensor, nn

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
                    nesterov: bool = False, sparse: bool = False) -> torch.optim.Optimizer:
    """Optimizer ``name`` (one of :data:`ALL`) over ``params`` (parameters, or param groups
    from :func:`param_groups`, whose own ``weight_decay`` wins over the argument).

    ``sparse=True``: the row-sparse variant of ``name`` for sparse gradients (module docstring:
    lazy moments, no weight decay); the default builds the dense optimizers of before."""
    params = list(params)
    if lr <= 0:
        raise ConfigError(f"learning rate must be > 0, got lr={lr}")
    if sparse:
        return _build_sparse(params, name, lr=lr, momentum=momentum,
                             weight_decay=weight_decay, nesterov=nesterov)
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


SPARSE = ("sgd", "rsgd", "adam", "adam_expmap0", "riemannian_adam")


def _build_sparse(params: list, name: str, *, lr: float, momentum: float, weight_decay: float,
                  nesterov: bool) -> torch.optim.Optimizer:
    """The row-sparse optimizer of ``name`` (module docstring), or a ConfigError."""
    if name not in SPARSE:
        raise ConfigError(f"optimizer {name!r} has no sparse-gradient variant; allowed with "
                          f"sparse updates: {', '.join(SPARSE)} (or turn sparse updates off)")
    decays = [g.get("weight_decay", weight_decay) if isinstance(g, dict) else weight_decay
              for g in params]
    if any(d > 0 for d in decays):
        raise ConfigError(f"sparse updates have no weight decay (got weight_decay="
                          f"{max(decays)}); set it to 0 or turn sparse updates off")
    if name in ("rsgd", "riemannian_adam"):
        _require_manifold(params, name)
    if name in ("sgd", "rsgd"):
        return RowSparseRiemannianSGD(params, lr=lr, momentum=momentum,
                                      nesterov=nesterov and momentum > 0)
    return RowSparseRiemannianAdam(params, lr=lr)


def sparse_rows(grad: Tensor) -> tuple[Tensor, Tensor]:
    """``(rows, g)``: the distinct rows of a row-sparse COO gradient (sorted) and the sum of
    each row's entries, i.e. ``grad.coalesce()``'s indices and values, by ``unique`` and
    ``index_add_`` (cheaper than ``coalesce`` on the CPU)."""
    if grad.is_coalesced():
        return grad.indices()[0], grad.values()
    rows, inv = torch.unique(grad._indices()[0], sorted=True, return_inverse=True)
    vals = grad._values()
    g = vals.new_zeros((len(rows), *vals.shape[1:])).index_add_(0, inv, vals)
    return rows, g


def _manifold(opt: geoopt.optim.mixin.OptimMixin, point: Tensor):
    if isinstance(point, geoopt.ManifoldParameter | geoopt.ManifoldTensor):
        return point.manifold
    return opt._default_manifold


def _row_sparse_params(opt: torch.optim.Optimizer, group: dict[str, Any]) -> Iterator[
        tuple[Tensor, Any, Tensor, Tensor, dict[str, Any]]]:
    """``(param, manifold, rows, summed row gradients, state)`` for each parameter of
    ``group`` that has a gradient; a dense gradient is a RuntimeError naming the optimizer."""
    for full in group["params"]:
        if full.grad is None:
            continue
        if not full.grad.is_sparse:
            raise RuntimeError(f"{type(opt).__name__} needs sparse gradients "
                               "(F.embedding(..., sparse=True))")
        rows, grad = sparse_rows(full.grad)
        yield full, _manifold(opt, full), rows, grad, opt.state[full]


class RowSparseRiemannianAdam(geoopt.optim.SparseRiemannianAdam):
    """``geoopt.optim.SparseRiemannianAdam`` (lazy Riemannian Adam; the Euclidean manifold for
    plain tensors), its step computed on :func:`sparse_rows` instead of ``coalesce`` +
    ``index_select``. Same state, same update; per looked-up row x with Riemannian gradient g
    (Bécigneul & Ganea 2019, Alg. 1, lazily; ``t`` counts every step):

        m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)⟨g, g⟩_component,
        x, m ← retr_transp(x, −lr · (m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε), m).
    """

    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's signature
        loss = closure() if closure is not None else None
        with torch.no_grad():
            for group in self.param_groups:
                b1, b2 = group["betas"]
                for full, manifold, rows, grad, state in _row_sparse_params(self, group):
                    if group["amsgrad"]:
                        raise NotImplementedError("amsgrad is not implemented here")
                    if len(state) == 0:
                        state["step"] = 0
                        state["exp_avg"] = torch.zeros_like(full)
                        state["exp_avg_sq"] = torch.zeros_like(full)
                    state["step"] += 1
                    point = full[rows]
                    exp_avg = state["exp_avg"][rows]
                    exp_avg_sq = state["exp_avg_sq"][rows]
                    grad = manifold.egrad2rgrad(point, grad)
                    exp_avg.mul_(b1).add_(grad, alpha=1 - b1)
                    exp_avg_sq.mul_(b2).add_(manifold.component_inner(point, grad),
                                             alpha=1 - b2)
                    denom = exp_avg_sq.div(1 - b2 ** state["step"]).sqrt_()
                    direction = exp_avg.div(1 - b1 ** state["step"]) / denom.add_(group["eps"])
                    new_point, exp_avg_new = manifold.retr_transp(
                        point, -group["lr"] * direction, exp_avg)
                    full[rows] = new_point
                    state["exp_avg"][rows] = exp_avg_new
                    state["exp_avg_sq"][rows] = exp_avg_sq
                    if group["stabilize"] is not None and \
                            state["step"] % group["stabilize"] == 0:
                        self.stabilize_group(group)
        return loss


class RowSparseRiemannianSGD(geoopt.optim.SparseRiemannianSGD):
    """``geoopt.optim.SparseRiemannianSGD`` (Euclidean manifold for plain tensors), its step
    computed on :func:`sparse_rows`. Per looked-up row x with Riemannian gradient g (thesis
    eq. 2.12-2.13; lazy momentum buffer b, first set to the Euclidean gradient as geoopt does):

        b ← μb + (1 − dampening)g,  d = g + μb (Nesterov) or b,
        x, b ← retr_transp(x, −lr · d, b)      (x ← retr(x, −lr · g) without momentum).
    """

    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's signature
        loss = closure() if closure is not None else None
        with torch.no_grad():
            for group in self.param_groups:
                group["step"] = group.get("step", 0) + 1
                mu, lr = group["momentum"], group["lr"]
                for full, manifold, rows, grad, state in _row_sparse_params(self, group):
                    if len(state) == 0 and mu > 0:
                        buf = torch.zeros_like(full)
                        buf[rows] = grad
                        state["momentum_buffer"] = buf
                    point = full[rows]
                    grad = manifold.egrad2rgrad(point, grad)
                    if mu > 0:
                        buf = state["momentum_buffer"][rows]
                        buf.mul_(mu).add_(grad, alpha=1 - group["dampening"])
                        d = grad.add_(buf, alpha=mu) if group["nesterov"] else buf
                        full[rows], state["momentum_buffer"][rows] = manifold.retr_transp(
                            point, -lr * d, buf)
                    else:
                        full[rows] = manifold.retr(point, -lr * grad)
                if group["stabilize"] is not None and group["step"] % group["stabilize"] == 0:
                    self.stabilize_group(group)
        return loss


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
    if isinstance(optimizer, geoopt.optim.RiemannianAdam | geoopt.optim.SparseRiemannianAdam):
        for st in optimizer.state.values():
            if isinstance(st.get("step"), torch.Tensor):
                st["step"] = int(st["step"].item())
