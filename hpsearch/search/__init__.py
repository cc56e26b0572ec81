"""Search layer: YAML search spaces (``space``), the Ray Tune launcher (``tuner``) and the MLflow
trial callback (``callbacks``). ``space`` imports neither Ray nor MLflow."""
