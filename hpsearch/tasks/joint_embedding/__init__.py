"""Task ``joint_embedding``: labels and images in one order-preserving space (thesis §5.6,
§6.2): a label table plus a learned map of frozen image features, trained on the label closure
and label → image edges, evaluated by per-level classification (eq. 5.1), hit@k and graph
reconstruction."""

from __future__ import annotations

from hpsearch.config import ModelConfig
from hpsearch.hierarchy import Hierarchy
from hpsearch.models.joint_embedding import (
    JointEmbedding,
    JointEmbeddingParams,
    build_joint_embedding,
)
from hpsearch.tasks.base import (
    BACKBONE_KEYS,
    CLASSIFIER_ONLY_KEYS,
    TaskSpec,
    register_task,
    untrained_metric_names,
)
from hpsearch.tasks.config import TrialConfig
from hpsearch.tasks.joint_embedding.classify import classify_levels, signed_violation
from hpsearch.tasks.joint_embedding.experiment import (
    TASK,
    JointEmbeddingExperiment,
)
from hpsearch.tasks.joint_embedding.features import feature_source, source_feature_dim
from hpsearch.tasks.joint_embedding.init import load_label_table


def unused_keys(cfg: TrialConfig) -> tuple[str, ...]:
    """The classifier's optimizer keys and ``optim.lr`` (``label_lr`` / ``image_lr`` instead);
    the backbone keys too when the features come from a run's checkpoint (its own backbone and
    preprocessing are used)."""
    keys = CLASSIFIER_ONLY_KEYS + ("optim.lr",)
    if cfg.model.params.features == "checkpoint":
        keys += BACKBONE_KEYS
    return keys


def joint_model(cfg: TrialConfig, hierarchy: Hierarchy, in_ch: int = 3) -> JointEmbedding:
    """The untrained module of a joint config, its feature size resolved from the feature
    source (the network is built, no feature is extracted)."""
    p: JointEmbeddingParams = cfg.model.params
    model: ModelConfig = cfg.model
    return build_joint_embedding(model.family, p, hierarchy.num_nodes,
                                 source_feature_dim(model, p, in_ch))


SPEC = register_task(TaskSpec(
    name=TASK, experiment=JointEmbeddingExperiment, params=JointEmbeddingParams,
    metric_names=untrained_metric_names, unused_keys=unused_keys, exports="embeddings",
    default_metric="val_micro_f1", report="levels",
    description="labels + images in one space via W·CNN(i) (thesis §5.6)"))

__all__ = ["SPEC", "JointEmbeddingExperiment", "classify_levels", "feature_source",
           "joint_model", "load_label_table", "signed_violation"]
