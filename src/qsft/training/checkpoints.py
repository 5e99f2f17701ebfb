"""Finding checkpoints: the newest *complete* one (trainer_state.json is written last)."""

from __future__ import annotations

import re
from pathlib import Path

COMPLETE_MARKER = "trainer_state.json"


def latest_complete_checkpoint(out: str | Path) -> str | None:
    """Path of the highest-step checkpoint-N folder in `out` whose save finished; None if there is none."""
    candidates = []
    for folder in Path(out).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
        if match and (folder / COMPLETE_MARKER).is_file():
            candidates.append((int(match.group(1)), folder))
    return str(max(candidates)[1]) if candidates else None
