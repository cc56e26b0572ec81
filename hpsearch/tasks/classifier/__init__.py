"""Task ``classifier``: a CNN backbone and a hierarchy-aware head trained on labelled images
(thesis ch. 3-4; Barz & Denzler's semantic embeddings), evaluated per level and by retrieval,
exported as a predictor that maps images to per-level probabilities."""

from hpsearch.config import FamilyParams
from hpsearch.tasks.base import TaskSpec, register_task
from hpsearch.tasks.classifier.experiment import (
    TASK,
    ClassifierExperiment,
    PredictProgram,
    metric_names,
)

SPEC = register_task(TaskSpec(
    name=TASK, experiment=ClassifierExperiment, params=FamilyParams, metric_names=metric_names,
    exports="predictor", default_metric="val_micro_f1", report="levels",
    description="image classifier: backbone + hierarchy-aware head (thesis ch. 3-4)"))

__all__ = ["SPEC", "ClassifierExperiment", "PredictProgram", "metric_names"]
