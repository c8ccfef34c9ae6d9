"""Prefect tasks: thin wrappers, one module per stage, each calling into :mod:`tlops`."""
