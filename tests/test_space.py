from __future__ import annotations

import optuna
import pytest

from hpsearch.errors import ConfigError
from hpsearch.search.space import load_space, suggest, validate_space
from hpsearch.tasks.config import TrialConfig, validate_trial

BASE = {"name": "t", "family": "per_level", "dataset": "synthetic",
        "search": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1}}}


def _err(**changes) -> str:
    raw = {**BASE, **changes}
    with pytest.raises(ConfigError) as e:
        validate_space(raw)
    return str(e.value)


def test_bad_spaces_name_the_key():
    assert "family: unknown model family 'nope'; allowed: " in _err(family="nope")
    assert "dataset: unknown dataset 'x'" in _err(dataset="x")
    assert "search.optim.lr: Value error, empty range" in _err(
        search={"optim.lr": {"type": "uniform", "low": 1, "high": 1}})
    assert "optim.lrr: unknown key" in _err(
        search={"optim.lrr": {"type": "uniform", "low": 0.1, "high": 1}})
    assert "budget.num_samples" in _err(budget={"num_samples": 0})
    assert "colour: unknown key" in _err(colour="red")
    assert "optim.optimizer: got 'rmsprop'" in _err(
        search={"optim.optimizer": {"type": "categorical", "choices": ["sgd", "rmsprop"]}})
    assert "when: 'optim.x' is not a searched" in _err(
        search={"optim.lr": {"type": "uniform", "low": 0.1, "high": 1,
                             "when": {"optim.x": 1}}})


def test_an_unknown_fixed_key_is_blamed_on_itself_not_on_a_searched_one():
    fixed = {"optim.bogus": 3}
    msg = _err(fixed=fixed)
    assert "fixed.optim.bogus: unknown key; allowed: optimizer, lr, momentum" in msg, msg
    assert "search.optim.lr" not in msg
    assert "fixed.optim.bogus: unknown key" in _err(fixed=fixed, search={})
    assert "fixed.bogus: unknown key; allowed: data, model, optim" in _err(fixed={"bogus": 1})
    assert "fixed.colour.x: unknown section 'colour'" in _err(fixed={"colour.x": 1})
    msg = _err(fixed={"model.params": {"bogus": 1}})
    assert "fixed.model.params.bogus: unknown key (family 'per_level')" in msg, msg
    # a searched value that is bad stays the searched key's fault
    assert "search.optim.optimizer.choices[1]='rmsprop' is not a valid value" in _err(
        fixed={"optim.lr": 0.1},
        search={"optim.optimizer": {"type": "categorical", "choices": ["sgd", "rmsprop"]}})


def test_malformed_yaml(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nsearch: [unclosed\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_space(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_space(tmp_path / "missing.yaml")


def test_conditional_dimensions_and_list_choices():
    space = validate_space({**BASE, "search": {
        "optim.optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
        "optim.momentum": {"type": "uniform", "low": 0.5, "high": 0.9,
                           "when": {"optim.optimizer": "sgd"}},
        "optim.level_weights": {"type": "categorical", "choices": [[1, 1, 1, 1], [0, 0, 0, 1]]},
    }})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        t = study.ask()
        suggest(t, space)
        seen.add(t.params["optim.optimizer"])
        assert ("optim.momentum" in t.params) == (t.params["optim.optimizer"] == "sgd")
        cfg = space.resolve(t.params)
        assert cfg.optim.level_weights in ((1, 1, 1, 1), (0, 0, 0, 1))
        study.tell(t, 0.0)
    assert seen == {"sgd", "adam"}


def test_trial_config_flat_roundtrip():
    cfg = TrialConfig.from_flat({"model.family": "euclidean_cone", "optim.lr": 0.2,
                                 "model.params.dim": 3, "seed": 4})
    flat = cfg.flatten()
    assert flat["optim.lr"] == 0.2 and flat["model.params.dim"] == 3 and flat["seed"] == 4
    assert TrialConfig.from_flat(flat) == cfg
    with pytest.raises(ConfigError, match="optim.lr: Input should be greater than 0"):
        TrialConfig.from_flat({"optim.lr": -1})


def test_resolved_params_fill_family_defaults_and_drop_unused_keys():
    from hpsearch.models import FAMILIES
    from hpsearch.tasks import resolved_params

    # family defaults are filled in next to what the space set
    cfg = TrialConfig.from_flat({"model.family": "euclidean_cone", "model.params.dim": 3})
    flat = resolved_params(cfg)
    defaults = FAMILIES.get("euclidean_cone").params()
    assert flat["model.params.dim"] == 3
    assert flat["model.params.K"] == defaults.K and flat["model.params.margin"] == defaults.margin
    # the embedding tasks take optimizers from model.params and train no backbone
    assert "optim.optimizer" not in flat and "model.backbone" not in flat
    assert flat["optim.lr"] == cfg.optim.lr  # label_lr falls back to it
    joint = resolved_params(TrialConfig.from_flat({
        "model.family": "joint_euclidean_cone", "model.params.features": "checkpoint",
        "model.params.feature_checkpoint": "/x"}))
    assert "optim.lr" not in joint and "model.backbone" not in joint
    assert joint["model.params.image_lr"] > 0 and joint["optim.batch_size"] > 0
    # classifiers: optimizer / schedule keys only where they apply
    cls = TrialConfig.from_flat({"model.family": "per_level", "optim.optimizer": "adam",
                                 "optim.schedule": "sgdr"})
    adam = resolved_params(cls)
    assert adam["optim.optimizer"] == "adam" and adam["model.backbone"] == "small_cnn"
    assert "optim.momentum" not in adam and "optim.step_size" not in adam
    assert adam["optim.sgdr_period"] == cls.optim.sgdr_period
    sgd = resolved_params(cls.replace(optim__optimizer="sgd", optim__schedule="step"))
    assert sgd["optim.momentum"] == 0.9 and "optim.sgdr_period" not in sgd
    assert sgd["optim.step_size"] == cls.optim.step_size


def test_shipped_spaces_validate():
    from pathlib import Path

    for f in sorted((Path(__file__).resolve().parents[1] / "search_spaces").rglob("*.yaml")):
        load_space(f)


def test_spaces_that_would_not_mean_what_they_say_are_refused():
    """Both range ends are checked against the config, not just ``low``; a search never
    starts with a value a trial would reject."""
    msg = _err(search={"optim.momentum": {"type": "uniform", "low": 0.5, "high": 1.5}})
    assert "search.optim.momentum.high=1.5 is not a valid value" in msg
    assert "less than 1" in msg
    assert "search.optim.batch_size.low=0 is not a valid value" in _err(
        search={"optim.batch_size": {"type": "int", "low": 0, "high": 64}})
    assert "int needs whole numbers, got low=16.5" in _err(
        search={"optim.batch_size": {"type": "int", "low": 16.5, "high": 64}})
    assert "logint samples on a log scale and takes no step" in _err(
        search={"optim.batch_size": {"type": "logint", "low": 16, "high": 128, "step": 16}})
    assert "loguniform samples on a log scale" in _err(
        search={"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1, "step": 0.01}})
    assert "step=0.3 does not divide high - low" in _err(
        search={"optim.momentum": {"type": "uniform", "low": 0.1, "high": 0.9, "step": 0.3}})
    assert "takes 'low' and 'high', not 'choices'" in _err(
        search={"optim.lr": {"type": "uniform", "low": 0.1, "high": 0.2, "choices": [0.1]}})
    assert "when: optim.optimizer = 'adamw' can never be sampled" in _err(search={
        "optim.optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
        "optim.momentum": {"type": "uniform", "low": 0.5, "high": 0.9,
                           "when": {"optim.optimizer": "adamw"}}})
    # what is fine stays fine: stepped ranges that divide, int ranges, when on a list
    validate_space({**BASE, "search": {
        "optim.momentum": {"type": "uniform", "low": 0.1, "high": 0.9, "step": 0.1},
        "optim.batch_size": {"type": "int", "low": 16, "high": 64, "step": 16},
        "optim.optimizer": {"type": "categorical", "choices": ["sgd", "adam", "adamw"]},
        "optim.weight_decay": {"type": "loguniform", "low": 1e-5, "high": 1e-2,
                               "when": {"optim.optimizer": ["adam", "adamw"]}}}})


def test_configs_written_before_the_task_layer_still_load():
    """Checkpoints, bundles and MLflow runs of the earlier schema: sparse model.params and
    resources.use_gpu (now derived from the GPU counts) validate into the same config."""
    old = {"model": {"family": "euclidean_cone", "params": {"dim": 3}},
           "resources": {"num_workers": 2, "use_gpu": True, "cpus_per_worker": 1.0,
                         "gpus_per_worker": 1.0, "force_trainer": False}}
    cfg = validate_trial(old)
    assert cfg.model.params.dim == 3 and cfg.model.params.K == 3.0  # typed, defaults filled
    assert cfg.resources.use_gpu and cfg.resources.gpus_per_worker == 1.0
    # the old default gpus_per_worker=1.0 counted only with use_gpu: a CPU run stays one
    cpu = validate_trial({"resources": {"use_gpu": False, "gpus_per_worker": 1.0}})
    assert not cpu.resources.use_gpu and cpu.resources.gpus_per_worker == 0.0
    gpu = validate_trial({"resources": {"use_gpu": True}})
    assert gpu.resources.use_gpu and gpu.resources.trainer_path is False


def test_a_space_without_a_metric_selects_by_its_tasks_default():
    base = {"name": "x", "fixed": {"data.params": {"label_source": "parent_child",
                                                    "path": "unused"}}}
    label = validate_space({**base, "family": "euclidean_cone"}, check_registries=True)
    assert label.metric == "val_edge_f1" and label.resolve({}).metric == "val_edge_f1"
    cls = validate_space({"name": "y", "family": "per_level"})
    assert cls.metric == "val_micro_f1"
    assert validate_space({"name": "z", "family": "per_level",
                           "metric": "val_macro_f1"}).metric == "val_macro_f1"
