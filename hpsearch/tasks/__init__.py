"""Tasks: one subpackage per kind of experiment, each registered in :data:`TASKS`.

* :mod:`~hpsearch.tasks.classifier`: image classifiers (a head on a backbone);
* :mod:`~hpsearch.tasks.label_embedding`: order-preserving embeddings of a label hierarchy;
* :mod:`~hpsearch.tasks.joint_embedding`: labels and images in one embedding space.

A task package declares in one place (its :class:`TaskSpec`) its params schema, the metrics it
logs, the config keys it ignores, what it exports and its experiment. Shared here:
:class:`TrialConfig` (the validated config of one trial), :mod:`~hpsearch.tasks.optim` (the one
optimizer and schedule builder), :mod:`~hpsearch.tasks.checkpoint` (checkpoint directories) and
:mod:`~hpsearch.tasks.runner` (the epoch loop every execution mode runs). No Ray, no MLflow.

Adding a task: a new subpackage that calls :func:`register_task`, and its import below.
"""

from hpsearch.tasks import classifier, joint_embedding, label_embedding
from hpsearch.tasks.base import (
    TASKS,
    Experiment,
    LabelTable,
    RunContext,
    TaskSpec,
    build_experiment,
    register_task,
    resolved_params,
    task_of,
)
from hpsearch.tasks.checkpoint import experiment_from_checkpoint
from hpsearch.tasks.config import TrialConfig, validate_trial
from hpsearch.tasks.runner import DirectoryReporter, run_trial

__all__ = ["TASKS", "DirectoryReporter", "Experiment", "LabelTable", "RunContext", "TaskSpec",
           "TrialConfig", "build_experiment", "classifier", "experiment_from_checkpoint",
           "joint_embedding", "label_embedding", "register_task", "resolved_params",
           "run_trial", "task_of", "validate_trial"]
