"""Models, datasets, training loop, evaluation and MLflow registration."""
