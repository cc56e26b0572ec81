"""Frozen, validated trial configuration.

A trial's sampled values (dotted keys such as ``optim.lr``) are merged into the fixed values of
a search space and validated into a :class:`TrialConfig` before anything below the trainable
boundary sees them. Unknown keys are errors that name the key and the allowed ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hpsearch.errors import ConfigError


class _Frozen(BaseModel):
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
    freeze_backbone: bool = False  # train only the head (thesis --freeze_weights)
    grayscale: bool = False  # feed 1-channel images (thesis Table 4.9)
    width: int = Field(32, gt=0)  # channels of the small CNN's first stage
    params: dict[str, Any] = Field(default_factory=dict)  # family-specific options


class OptimConfig(_Frozen):
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["none", "step", "cosine", "sgdr"] = "cosine"
    step_size: int = Field(10, gt=0)  # epochs between x0.1 decays (schedule=step)
    sgdr_period: int = Field(4, gt=0)  # first cycle length in epochs (schedule=sgdr)
    sgdr_mult: int = Field(2, gt=0)  # cycle length multiplier (schedule=sgdr)
    batch_size: int = Field(64, gt=0)
    epochs: int = Field(4, gt=0)
    eval_every: int = Field(1, gt=0)  # validate/report every k epochs (and after the last)
    grad_clip: float | None = Field(None, gt=0)  # max global grad norm
    level_weights: tuple[float, ...] | None = None  # per-level loss weights (None = all 1)
    amp: bool = True  # bf16 autocast, only on CUDA
    channels_last: bool = True  # only on CUDA


class ResourceConfig(_Frozen):
    num_workers: int = Field(1, gt=0)  # DDP workers; >1 (or force_trainer) uses TorchTrainer
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)
    force_trainer: bool = False  # run single-worker trials through TorchTrainer too


class TrialConfig(_Frozen):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    resources: ResourceConfig = Field(default_factory=ResourceConfig)
    seed: int = 0
    metric: str = "val_micro_f1"  # model selection inside the trial (best epoch)
    mode: Literal["max", "min"] = "max"
    # second criterion when ``metric`` ties (e.g. a val F1 saturated at 1.0): an epoch with an
    # equal ``metric`` and a better ``tie_break`` becomes the best one; None keeps the earliest
    tie_break: str | None = None
    tie_break_mode: Literal["max", "min"] = "max"

    @field_validator("metric", "tie_break")
    @classmethod
    def _metric_prefix(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("val_", "train_")):
            raise ValueError(f"metric {v!r} must be a validation metric such as 'val_micro_f1'")
        return v

    # ------------------------------------------------------------------ dotted keys
    @classmethod
    def from_flat(cls, flat: Mapping[str, Any], base: TrialConfig | None = None) -> TrialConfig:
        """Merge dotted-key overrides (``{"optim.lr": 0.1, "model.params.margin": 1}``)."""
        tree = (base or cls()).model_dump()
        for key, value in flat.items():
            set_dotted(tree, key, value)
        return validate_trial(tree)

    def flatten(self) -> dict[str, Any]:
        """The fully resolved config as ``{dotted.key: value}`` (for MLflow params)."""
        out: dict[str, Any] = {}
        flatten_into(self.model_dump(), out)
        return out

    def replace(self, **flat: Any) -> TrialConfig:
        return TrialConfig.from_flat({k.replace("__", "."): v for k, v in flat.items()}, self)


def validate_trial(tree: Mapping[str, Any]) -> TrialConfig:
    try:
        return TrialConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(one_line(e)) from None


def one_line(e: ValidationError) -> str:
    """First pydantic error as ``key: message``, the way a CLI user wants it."""
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "literal_error":
        msg = f"got {err.get('input')!r}; {msg.lower()}"
    more = len(e.errors()) - 1
    return f"{loc}: {msg}" + (f" ({more} more errors)" if more else "")


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
