"""Label-only order-preserving embeddings: edge splits, negative sampling, optimizers and the
``label_embedding`` experiment (thesis §5.5, §6.1)."""

from hpsearch.embeddings.negatives import NegativeSampler
from hpsearch.embeddings.optim import build_optimizer, build_scheduler
from hpsearch.embeddings.splits import (
    EdgeSplits,
    make_edge_splits,
    node_levels,
    predefined_edge_splits,
    transitive_reduction,
)

__all__ = ["EdgeSplits", "NegativeSampler", "build_optimizer", "build_scheduler",
           "make_edge_splits", "node_levels", "predefined_edge_splits", "transitive_reduction"]
