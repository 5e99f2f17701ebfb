"""One exception family for everything qsft reports to users.

Every message names where the problem is (file, line, episode id, field) and what to do.
"""

from __future__ import annotations


class QSFTError(Exception):
    """Base class of all errors qsft raises on purpose."""


class EpisodeFormatError(QSFTError):
    """An episode (JSONL line, dataset row or Python object) is malformed."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        episode_id: str | None = None,
        field: str | None = None,
        row: int | None = None,
    ) -> None:
        self.source, self.line, self.episode_id, self.field, self.row = source, line, episode_id, field, row
        where = []
        if source is not None:
            where.append(f"{source}" + (f":{line}" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        if row is not None:  # a table's row (Parquet, Arrow, a Hugging Face dataset), counted from 0 like theirs
            where.append(f"row {row}")
        if episode_id is not None:
            where.append(f"episode {episode_id!r}")
        if field is not None:
            where.append(f"field {field!r}")
        self.reason = message
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class RewardRangeError(EpisodeFormatError):
    """After the reward transform, a partial return leaves [0, 1]."""


class SequenceTooLongError(EpisodeFormatError):
    """A tokenised episode does not fit the context and truncation is off or impossible."""


class ConfigError(QSFTError):
    """An impossible or unknown configuration value."""


class ModelLoadError(QSFTError):
    """A model directory is missing, has no weights, or does not fit the run."""


class EnvError(QSFTError):
    """Unknown environment name or an environment that cannot run here."""


class NumericalError(QSFTError):
    """A NaN/inf appeared in a target, q_hat or loss during training."""


class TrainingInterrupted(QSFTError):
    """SIGINT stopped training after saving a checkpoint; resume with --resume_from_checkpoint auto."""
