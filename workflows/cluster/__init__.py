"""Cluster tools: Ray Jobs submission (``unspur submit``/status/logs/stop) and the MLflow UI."""
