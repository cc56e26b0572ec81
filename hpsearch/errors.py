"""Typed errors. Everything the platform raises on purpose derives from :class:`HpsearchError`.

The CLI turns any ``HpsearchError`` into one line on stderr and a non-zero exit, so the message
must name the bad value and, where there is one, the fix.
"""

from __future__ import annotations


class HpsearchError(Exception):
    """Root of all hpsearch errors."""


class ConfigError(HpsearchError, ValueError):
    """A configuration value or search space is invalid."""


class HierarchyError(HpsearchError, ValueError):
    """A label hierarchy is malformed (cycle, two parents in a tree, unknown label, ...)."""


class DataError(HpsearchError):
    """A dataset is missing or malformed."""


class NonFiniteLossError(HpsearchError, FloatingPointError):
    """Training produced a NaN/inf loss; the search layer marks the trial as failed."""


class TrackingError(HpsearchError):
    """The MLflow tracking store cannot be reached or holds unexpected data."""


class ClusterError(HpsearchError):
    """The Ray cluster cannot be joined, or cannot ever run the search's trials."""


class ExportError(HpsearchError):
    """An export bundle is missing, corrupt or does not match its checksum."""


class CheckpointError(ConfigError):
    """A checkpoint file is unreadable or holds more than tensors and plain data (a subclass
    of :class:`ConfigError`: a checkpoint is named by a config value or a run)."""
