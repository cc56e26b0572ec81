"""Frozen, validated sections of a trial's configuration, and dotted-key helpers.

``data``, ``model``, ``optim`` and ``resources`` are defined here, below every layer that reads
them. The whole trial config, whose ``model.params`` is typed by the model family, is
:class:`hpsearch.tasks.TrialConfig`: it needs the family registry, which lives above this
module. Unknown keys are errors that name the key and the allowed ones.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from hpsearch.errors import ConfigError


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


class FamilyParams(BaseModel):
    """Base of a model family's typed ``model.params``; unknown keys are errors.

    Each family registers a subclass (:func:`hpsearch.models.register_family`); the trial
    config (:class:`hpsearch.tasks.TrialConfig`) validates ``model.params`` into it once.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


class DataConfig(_Frozen):
    name: str = "synthetic"  # a registered dataset (hpsearch.data.DATASETS)
    root: str | None = None  # where the dataset lives; synthetic data is cached here
    image_size: int = Field(32, gt=0)  # side of the square images fed to the backbone
    val_fraction: float = Field(0.1, ge=0, lt=1)  # for datasets without a validation split
    resample: Literal["none", "inverse", "inverse_sqrt"] = "none"  # thesis §4.4
    resample_level: int = -1  # level whose label counts drive resampling (-1 = leaf level)
    class_weights: bool = False  # loss weights ∝ 1/count per label (all levels)
    augment: bool = True  # random crop + horizontal flip on the training split
    num_workers: int = Field(0, ge=0)  # DataLoader processes (0: batches sliced in-process)
    params: dict[str, Any] = Field(default_factory=dict)  # dataset-specific options


class ModelConfig(_Frozen):
    family: str = "per_level"  # a registered model family (hpsearch.models.FAMILIES)
    backbone: str = "small_cnn"  # a registered backbone (hpsearch.models.BACKBONES)
    pretrained_weights: str | None = None  # local .pth of ImageNet weights; never downloaded
    # which parameters train (searchable): "all"; "head" (thesis Table 4.3 "last layer only",
    # --freeze_weights); "first_and_head" (Table 4.4: the backbone's first conv + the head).
    # Frozen parameters leave the optimizer and their BatchNorm stays in eval mode.
    train_layers: Literal["all", "head", "first_and_head"] = "all"
    freeze_backbone: bool = False  # deprecated: true means train_layers=head (old configs)
    grayscale: bool = False  # feed 1-channel images (thesis Table 4.9)
    width: int = Field(32, gt=0)  # channels of the small CNN's first stage
    # the family's own options, typed by the family (validated by TrialConfig, never re-parsed)
    params: SerializeAsAny[FamilyParams] = Field(default_factory=lambda: FamilyParams())

    @model_validator(mode="after")
    def _train_layers(self) -> ModelConfig:
        """``freeze_backbone`` (kept so old configs and checkpoints still load) may only agree
        with ``train_layers``; a partly frozen backbone needs weights to freeze. (The legacy
        ``freeze_backbone`` without weights is refused when the backbone is built.)"""
        if self.freeze_backbone and "train_layers" in self.model_fields_set \
                and self.train_layers != "head":
            raise PydanticCustomError(CONFIG_ERROR, "{msg}", {"msg": (
                f"model.freeze_backbone=true and model.train_layers={self.train_layers} "
                "disagree; drop freeze_backbone (deprecated: it means train_layers=head)")})
        if self.train_layers != "all" and not self.pretrained_weights:
            raise PydanticCustomError(CONFIG_ERROR, "{msg}", {"msg": (
                f"model.train_layers={self.train_layers} needs model.pretrained_weights (a "
                "frozen random backbone learns nothing); set it or use train_layers=all")})
        return self

    @property
    def trained_layers(self) -> str:
        """The effective ``train_layers``: ``"head"`` under the legacy ``freeze_backbone``."""
        return "head" if self.freeze_backbone else self.train_layers


class OptimConfig(_Frozen):
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)  # the schedule's maximum (SGDR: at every restart)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    # which trained parameters weight_decay reaches (hpsearch.tasks.optim.param_groups):
    # "all"; "kernels" = conv / linear weights only, no biases or norm layers (Keras
    # kernel_regularizer on every layer: Barz & Denzler's CIFAR networks); "head" = the head's
    # conv / linear weights only (an L2 on the classifier alone)
    weight_decay_scope: Literal["all", "kernels", "head"] = "all"
    schedule: Literal["none", "step", "cosine", "sgdr"] = "cosine"
    step_size: int = Field(10, gt=0)  # epochs between x0.1 decays (schedule=step)
    sgdr_period: int = Field(4, gt=0)  # first cycle length T_0 in epochs (schedule=sgdr)
    sgdr_mult: int = Field(2, gt=0)  # cycle length multiplier T_mult (schedule=sgdr)
    sgdr_eta_min: float = Field(1e-6, ge=0)  # floor of each cosine cycle (Barz: 1e-6)
    batch_size: int = Field(64, gt=0)
    epochs: int = Field(4, gt=0)
    eval_every: int = Field(1, gt=0)  # validate/report every k epochs (and after the last)
    grad_clip: float | None = Field(None, gt=0)  # max global grad norm
    level_weights: tuple[float, ...] | None = None  # per-level loss weights (None = all 1)
    amp: bool = True  # bf16 autocast, only on CUDA
    channels_last: bool = True  # only on CUDA

    @model_validator(mode="after")
    def _sgdr_floor(self) -> OptimConfig:
        if self.schedule == "sgdr" and self.sgdr_eta_min >= self.lr:
            raise PydanticCustomError(CONFIG_ERROR, "{msg}", {"msg": (
                f"optim.sgdr_eta_min={self.sgdr_eta_min:g} must be below optim.lr="
                f"{self.lr:g} (each SGDR cycle anneals from lr down to it); lower it")})
        return self


# optim keys that only mean something under one optimizer / schedule (not logged otherwise)
OPTIM_ONLY_WHEN: dict[str, tuple[str, tuple[str, ...]]] = {
    "optim.momentum": ("optim.optimizer", ("sgd",)),
    "optim.step_size": ("optim.schedule", ("step",)),
    "optim.sgdr_period": ("optim.schedule", ("sgdr",)),
    "optim.sgdr_mult": ("optim.schedule", ("sgdr",)),
    "optim.sgdr_eta_min": ("optim.schedule", ("sgdr",)),
}


class ResourceConfig(_Frozen):
    """What one trial asks of the cluster: the search space's ``resources`` block, carried
    whole into every trial's config (one schema, one set of defaults)."""

    cpus_per_trial: float = Field(1.0, gt=0)  # in-process trial (one worker)
    gpus_per_trial: float = Field(0.0, ge=0)  # fractions share a GPU between trials
    num_workers: int = Field(1, gt=0)  # >1: DDP through a Ray Train TorchTrainer
    cpus_per_worker: float = Field(1.0, gt=0)  # TorchTrainer workers
    gpus_per_worker: float = Field(0.0, ge=0)  # 0 with use_gpu: one GPU per worker
    driver_cpus: float = Field(0.5, ge=0)  # the Tune trial that drives a TorchTrainer
    force_trainer: bool = False  # TorchTrainer even for one worker
    max_failures: int = Field(1, ge=0)  # Tune retries of a failed trial (from its checkpoint)

    @model_validator(mode="before")
    @classmethod
    def _legacy_use_gpu(cls, raw: Any) -> Any:
        """Checkpoints, bundles and runs written before this schema carry ``use_gpu`` (now
        derived from the GPU counts) beside a ``gpus_per_worker`` that defaulted to 1 and
        counted only with ``use_gpu``: without it no GPU was used, with it at least one."""
        if isinstance(raw, dict) and "use_gpu" in raw:
            raw = dict(raw)
            if not raw.pop("use_gpu"):
                raw["gpus_per_trial"] = raw["gpus_per_worker"] = 0.0
            elif not raw.get("gpus_per_trial") and not raw.get("gpus_per_worker"):
                raw["gpus_per_worker"] = 1.0
        return raw

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_trial > 0 or self.gpus_per_worker > 0

    @property
    def trainer_path(self) -> bool:
        """Whether trials run through a Ray Train TorchTrainer (DDP) instead of in-process."""
        return self.num_workers > 1 or self.force_trainer


CONFIG_ERROR = "hpsearch_config"  # a validator's own ConfigError, passed through one_line whole


def one_line(e: ValidationError, model: type[BaseModel] | None = None) -> str:
    """First pydantic error as ``key: message``, the way a CLI user wants it.

    With ``model`` (the class that was validated), an unknown key's message lists the keys
    allowed where it stands (``optim.bogus: unknown key; allowed: optimizer, lr, ...``).
    """
    err = e.errors()[0]
    more = len(e.errors()) - 1
    if err["type"] == CONFIG_ERROR:
        return err["ctx"]["msg"] + (f" ({more} more errors)" if more else "")
    loc = ".".join(str(x) for x in err["loc"])
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
        allowed = _allowed_keys(model, err["loc"][:-1]) if model is not None else None
        if allowed:
            msg += f"; allowed: {', '.join(allowed)}"
    elif err["type"] == "literal_error":
        msg = f"got {err.get('input')!r}; {msg.lower()}"
    return f"{loc}: {msg}" + (f" ({more} more errors)" if more else "")


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The field names of the (nested) model at ``loc`` inside ``model``, None if ``loc`` does
    not lead to one (a free mapping such as ``data.params``)."""
    cls: Any = model
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        cls = _model_class(field.annotation)
        if cls is None:
            return None
    return list(cls.model_fields)


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model class in a field annotation (``X``, ``X | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_class(arg)
        if found is not None:
            return found
    return None


_SECTIONS = ("data", "model", "optim", "resources")


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for i, p in enumerate(parts[:-1]):
        if p not in node or not isinstance(node[p], dict):
            if i == 0 and p not in _SECTIONS:
                raise ConfigError(f"{key}: unknown section {p!r}; allowed: {', '.join(_SECTIONS)}")
            node[p] = {} if node.get(p) is None else node[p]
            if not isinstance(node[p], dict):
                raise ConfigError(f"{key}: {p!r} is not a section")
        node = node[p]
    node[parts[-1]] = value


def flatten_into(node: Any, out: dict[str, Any], prefix: str = "") -> None:
    """Nested dicts -> ``out[dotted.key] = leaf`` (tuples become lists, empty dicts leaves)."""
    if isinstance(node, dict) and node:
        for k, v in node.items():
            flatten_into(v, out, f"{prefix}{k}.")
    else:
        out[prefix[:-1]] = list(node) if isinstance(node, tuple) else node
