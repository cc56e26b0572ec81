"""Search layer, everything that imports Ray: YAML search spaces (``space``), the codec between
Tune/Optuna configs and trial configs (``codec``), the Ray Tune launcher (``tuner``), the MLflow
trial callback (``callbacks``) and the Tune trainable / Ray Train worker loop (``trainable``).
``space`` and ``codec`` import neither Ray nor MLflow."""
