"""Domain exceptions: each carries a one-line message that names the thing that is wrong.

The CLI maps every `StrataError` to exit code 2 and one line on stderr; the HTTP API maps them
to 4xx responses with the offending field named. Nothing here imports heavy libraries.
"""

from __future__ import annotations


class StrataError(Exception):
    """Base of every error that is the caller's to fix (bad input, missing file, bad config)."""


class ConfigError(StrataError):
    """A configuration value is invalid or a backend is unknown."""


class MissingExtraError(StrataError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed: pip install 'strata[{extra}]'")
        self.package = package
        self.extra = extra


class DataError(StrataError):
    """A data file is missing, corrupt, or has the wrong columns."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class UnknownDatasetError(StrataError):
    """A dataset name that no loader knows."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown dataset {name!r}; known: {', '.join(sorted(known))}")
        self.name = name


class ValidationError(StrataError):
    """A request, event or record has a bad field; `field` names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class StorageError(StrataError):
    """A write to local storage failed for want of space (or a read-only disk); what was being
    written was not committed, so rerunning once there is space is safe."""


class StoreUnavailableError(StrataError):
    """The online store (Valkey/Redis) cannot be reached or timed out; callers may degrade."""


class NotFoundError(StrataError):
    """A requested entity, artifact or model version does not exist."""


# Exit status of a command that ran to the end but whose version a promotion gate refused (the
# version is recorded, not served): not 2 (nothing to fix in the input) and not 1 (a crash).
EXIT_NOT_PROMOTED = 3
