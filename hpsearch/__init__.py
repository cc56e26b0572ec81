"""hpsearch: distributed hyperparameter search for image models with hierarchical labels.

Layers (imports point down): ``cli`` -> ``search`` (Ray Tune + Optuna) / ``tracking``
(MLflow) -> ``train.worker`` (Ray Train) -> ``train.driver`` / ``train.loop`` -> ``models``,
``data``, ``metrics``, ``geometry``, ``hierarchy``. Only the top three touch Ray or MLflow.
"""

__version__ = "0.1.0"
