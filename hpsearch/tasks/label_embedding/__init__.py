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
from hpsearch.tasks.config import TrialConfig
from hpsearch.tasks.label_embedding.experiment import (
    EMBEDDINGS_FILE,
    META_FILE,
    NODES_FILE,
    TASK,
    LabelEmbeddingExperiment,
    load_embedding_tensor,
    load_label_graph,
)

# the image pipeline's keys: a label hierarchy alone has no images
IMAGE_DATA_KEYS = ("data.image_size", "data.val_fraction", "data.resample",
                   "data.resample_level", "data.class_weights", "data.augment",
                   "data.num_workers")


def unused_keys(cfg: TrialConfig) -> tuple[str, ...]:
    """The classifier's optimizer and backbone keys and the image pipeline's; ``data.name``
    and ``data.root`` too when ``data.params.label_source`` names the labels' source."""
    keys = CLASSIFIER_ONLY_KEYS + BACKBONE_KEYS + IMAGE_DATA_KEYS
    if cfg.data.params.get("label_source") is not None:
        keys += ("data.name", "data.root")
    return keys


SPEC = register_task(TaskSpec(
    name=TASK, experiment=LabelEmbeddingExperiment, params=LabelEmbeddingParams,
    metric_names=untrained_metric_names, unused_keys=unused_keys,
    exports="embeddings", default_metric="val_edge_f1", report="edges",
    description="label hierarchy alone: order embeddings, Euclidean/hyperbolic cones (§5.5)"))

__all__ = ["EMBEDDINGS_FILE", "META_FILE", "NODES_FILE", "SPEC", "LabelEmbeddingExperiment",
           "load_embedding_tensor", "load_label_graph"]
