"""hpsearch: distributed hyperparameter search for image models with hierarchical labels.

Floors, top down (imports point down; ``tests/test_layering.py`` checks it):

* ``cli`` — argv in, one line per error out;
* ``api``, ``report``, ``bench`` — the Python API, tables and figures, benchmarks;
* ``search`` — YAML spaces, the Tune/Optuna <-> trial-config codec, the Tuner, the trainable:
  all the Ray;
* ``tracking`` (the one MLflow adapter), ``bundle`` (export and prediction);
* ``tasks`` — one package per task (classifier, label embedding, joint embedding), the trial
  config, the epoch loop and checkpoints;
* ``models`` — backbones, heads, embedding modules and the family registry;
* ``data``, ``metrics``, ``class_embeddings``; ``config``, ``hierarchy``, ``geometry``,
  ``registry``; ``errors``.

Everything below ``search`` imports and runs with torch alone.
"""

__version__ = "0.1.0"
