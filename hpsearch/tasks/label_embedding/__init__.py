"""Task ``label_embedding``: order-preserving embeddings of a label hierarchy alone (order
embeddings, Euclidean and hyperbolic cones; thesis §5.5, §6.1), trained on edge splits with
negative sampling, evaluated by held-out edge F1 and graph reconstruction."""

from hpsearch.models.label_embedding import LabelEmbeddingParams
from hpsearch.tasks.base import (
    BACKBONE_KEYS,
    CLASSIFIER_ONLY_KEYS,
    TaskSpec,
    register_task,
    untrained_metric_names,
)
from hpsearch.tasks.label_embedding.experiment import (
    EMBEDDINGS_FILE,
    META_FILE,
    NODES_FILE,
    TASK,
    LabelEmbeddingExperiment,
    load_embedding_tensor,
    load_label_graph,
)

SPEC = register_task(TaskSpec(
    name=TASK, experiment=LabelEmbeddingExperiment, params=LabelEmbeddingParams,
    metric_names=untrained_metric_names,
    unused_keys=lambda cfg: CLASSIFIER_ONLY_KEYS + BACKBONE_KEYS,
    exports="embeddings", default_metric="val_edge_f1", report="edges", needs_dataset=False,
    description="label hierarchy alone: order embeddings, Euclidean/hyperbolic cones (§5.5)"))

__all__ = ["EMBEDDINGS_FILE", "META_FILE", "NODES_FILE", "SPEC", "LabelEmbeddingExperiment",
           "load_embedding_tensor", "load_label_graph"]
