"""Adapters: the only modules that talk to MLflow (tracking, registry), git and DVC."""
