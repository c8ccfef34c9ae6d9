"""Errors that carry the CLI exit code of the design (section 7)."""

from __future__ import annotations


class TlopsError(Exception):
    """Base of every expected failure; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class ConfigError(TlopsError):
    """A bad config file, override or command-line usage (exit 2)."""

    exit_code = 2


class DataError(TlopsError):
    """The data is missing, does not match its DVC pointer, or breaks the contract (exit 3)."""

    exit_code = 3


class ContractFailedError(DataError):
    """The image data contract failed; the message names the rules and the files (exit 3)."""


class GateRejectedError(TlopsError):
    """The gate rejected the candidate (exit 4)."""

    exit_code = 4


class ServiceError(TlopsError):
    """An external service failed: MLflow, Prefect, a DVC remote, git (exit 5)."""

    exit_code = 5
