"""The frozen, validated config of one trial, with ``model.params`` typed by the family.

A trial's sampled values (dotted keys such as ``optim.lr``) are merged into the fixed values of
a search space and validated into a :class:`TrialConfig` once, before anything below the
trainable boundary sees them. ``model.params`` becomes the family's own params model
(``FamilySpec.params``, e.g. :class:`~hpsearch.models.label_embedding.EuclideanConeParams`), so
``cfg.model.params.K`` is a float that nothing downstream parses again. Unknown keys are errors
that name the key and the allowed ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from hpsearch.config import (
    CONFIG_ERROR,
    DataConfig,
    ModelConfig,
    OptimConfig,
    ResourceConfig,
    flatten_into,
    one_line,
    set_dotted,
)
from hpsearch.errors import ConfigError
from hpsearch.models import FAMILIES


class TrialConfig(BaseModel):
    model_config = {"frozen": True, "extra": "forbid", "protected_namespaces": ()}

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    resources: ResourceConfig = Field(default_factory=ResourceConfig)
    seed: int = 0
    # reproducibility (tasks.base.trial_numerics): deterministic torch kernels, every RNG
    # seeded from ``seed`` and the intra-op thread count fixed by the config (``torch_threads``,
    # else the trial's CPUs from ``resources``), so a rerun reproduces the trial bit for bit
    deterministic: bool = False
    # torch intra-op threads of the trial (None: the trial's CPUs in a search, torch's default
    # in 'hpsearch train'; with ``deterministic``: the CPUs the config asks for). Reductions
    # are summed in another order with another thread count, so the last bits differ.
    torch_threads: int | None = Field(None, gt=0)
    metric: str = "val_micro_f1"  # model selection inside the trial (best epoch)
    mode: Literal["max", "min"] = "max"
    # second criterion when ``metric`` ties (e.g. a val F1 saturated at 1.0): an epoch with an
    # equal ``metric`` and a better ``tie_break`` becomes the best one; None keeps the earliest
    tie_break: str | None = None
    tie_break_mode: Literal["max", "min"] = "max"
    # the other objectives of a multi-objective search: reported at the best epoch of
    # ``metric`` as ``best_<name>`` (one checkpoint per trial, so one point per trial)
    secondary_metrics: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _typed_family_params(cls, raw: Any) -> Any:
        """``model.params`` (a mapping) -> the family's params model, the one parse."""
        if not isinstance(raw, Mapping):
            return raw
        model = raw.get("model")
        if isinstance(model, ModelConfig):
            model = model.model_dump()  # re-typed below: its params may be the untyped base
        model = dict(model or {})
        family = model.get("family", ModelConfig.model_fields["family"].default)
        params = model.get("params")
        try:
            spec = FAMILIES.get(family)  # unknown family -> the allowed ones
            if not isinstance(params, spec.params):
                if isinstance(params, BaseModel):
                    params = params.model_dump()
                model["params"] = spec.parse_params(dict(params or {}))
        except ConfigError as e:  # pydantic would prefix "Value error, "; keep our one line
            raise PydanticCustomError(CONFIG_ERROR, "{msg}", {"msg": str(e)}) from None
        return {**raw, "model": model}

    @field_validator("metric", "tie_break")
    @classmethod
    def _metric_prefix(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("val_", "train_")):
            raise ValueError(f"metric {v!r} must be a validation metric such as 'val_micro_f1'")
        return v

    @field_validator("secondary_metrics")
    @classmethod
    def _secondary_prefix(cls, v: list[str]) -> list[str]:
        for m in v:
            if not m.startswith("val_"):
                raise ValueError(f"objective {m!r} must be a validation metric such as "
                                 "'val_macro_f1'")
        return v

    # ------------------------------------------------------------------ dotted keys
    @classmethod
    def from_flat(cls, flat: Mapping[str, Any], base: TrialConfig | None = None) -> TrialConfig:
        """Merge dotted-key overrides (``{"optim.lr": 0.1, "model.params.margin": 1}``)."""
        tree = (base or cls()).model_dump()
        new_family = flat.get("model.family", tree["model"]["family"])
        if new_family != tree["model"]["family"]:
            tree["model"]["params"] = {}  # another family's params do not carry over
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
    """A nested mapping -> :class:`TrialConfig`, or one-line :class:`ConfigError`."""
    try:
        return TrialConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(one_line(e, TrialConfig)) from None
