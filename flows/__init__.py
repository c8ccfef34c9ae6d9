"""Prefect flows (composition only) and the ``tlops`` command line."""
