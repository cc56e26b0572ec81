"""The one codec between what Ray Tune / Optuna carry and a trial's :class:`TrialConfig`.

Optuna samples the searched dimensions under their dotted keys (``optim.lr``); every trial's
Tune config also carries the space's fixed values and the trainer storage as constants
(:func:`constants`). :func:`trial_config` turns that Tune config into the validated trial
config: the trainable does it in the trial, the MLflow callback on the driver, with the same
function. Optuna's categorical choices must be None/bool/int/float/str, so lists travel as
``json:`` strings (:func:`encode_choice` / :func:`decode_choice`).

No Ray import here: the search space and the CLI use it too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hpsearch.tasks import TrialConfig

BASE_KEY = "__hpsearch_base"  # flat fixed values carried in every trial's config
STORAGE_KEY = "__hpsearch_storage"  # where TorchTrainer runs keep their checkpoints
INTERNAL_PREFIX = "__hpsearch"


def encode_choice(v: Any) -> Any:
    """A categorical choice as Optuna can store it: lists and dicts as ``json:`` strings."""
    return v if v is None or isinstance(v, bool | int | float | str) else "json:" + json.dumps(v)


def decode_choice(v: Any) -> Any:
    """The inverse of :func:`encode_choice`."""
    return json.loads(v[5:]) if isinstance(v, str) and v.startswith("json:") else v


def constants(base: Mapping[str, Any], storage: str) -> dict[str, Any]:
    """What every trial's Tune config carries beside the sampled values."""
    return {BASE_KEY: dict(base), STORAGE_KEY: storage}


def sampled(config: Mapping[str, Any]) -> dict[str, Any]:
    """The sampled values of a Tune config (decoded), without the carried constants."""
    return {k: decode_choice(v) for k, v in config.items() if not k.startswith(INTERNAL_PREFIX)}


def resolve(base: Mapping[str, Any], values: Mapping[str, Any]) -> TrialConfig:
    """Fixed values ``base`` overridden by sampled ``values`` (dotted keys, possibly encoded)
    -> the validated trial config."""
    flat = dict(base)
    flat.update({k: decode_choice(v) for k, v in values.items()})
    return TrialConfig.from_flat(flat)


def trial_config(config: Mapping[str, Any]) -> TrialConfig:
    """Tune's config (sampled dotted keys + the carried base) -> validated TrialConfig."""
    return resolve(config.get(BASE_KEY, {}), sampled(config))


def trainer_storage(config: Mapping[str, Any]) -> str | None:
    """Where a trial's TorchTrainer keeps its checkpoints (None outside a search)."""
    return config.get(STORAGE_KEY)
