"""The project's error types: raised where a user's input (a config key, a data file, a checkpoint, a
training run that diverged) is at fault, with a message that names the file or key and what was expected.

Entry scripts (`src/utils/cli.py`) print these as one line and exit non-zero. Every other exception is a
bug, in our code or below it, and keeps its traceback. Each type also derives from the built-in it replaced
(ValueError, RuntimeError), so callers that caught those keep working.
"""
from __future__ import annotations


class CoupAlignError(Exception):
    """Base of every error whose message is written for the user."""


class ConfigError(CoupAlignError, ValueError):
    """A configuration file, key or override that does not fit the schema or the registered parts."""


class DataError(CoupAlignError, ValueError):
    """A dataset file or field that cannot be read or does not hold what the format requires."""


class CheckpointError(CoupAlignError, RuntimeError, ValueError):
    """A checkpoint or weights file that is missing, unreadable or does not fit the configured model. (Both
    built-ins: checkpoint errors were RuntimeErrors, weights that do not fit a model ValueErrors.)"""


class TrainingError(CoupAlignError, RuntimeError):
    """A training run that cannot go on (diverged, too many unreadable samples); its checkpoints are kept."""
