"""Experiment tracking and the model registry (MLflow): ``experiment`` holds all of it;
``ranker_model`` is the pyfunc that MLflow runs from its source ("model from code")."""
