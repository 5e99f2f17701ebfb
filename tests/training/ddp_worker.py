"""Run by test_ddp.py (under torchrun, or alone for the 1-process reference): Q-SFT through `run.train`.

Each process records what only it can know into RECORD.rank{R}.pt: its final Q-model weights,
the losses its Trainer logged, and every file it opened for writing (or renamed) inside OUT,
seen through a Python audit hook.

    python -m tests.training.ddp_worker DATA BEHAVIOR_DIR OUT RECORD OVERRIDES_JSON
"""

from __future__ import annotations

import json
import os
import sys

import torch

from qsft.training import run

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _watch_writes(folder: str) -> list[str]:
    writes: list[str] = []

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str) and args[0].startswith(folder):
            mode, flags = args[1], args[2]
            if (mode and any(c in mode for c in "wax+")) or (flags or 0) & WRITE_FLAGS:
                writes.append(args[0])
        elif event == "os.rename" and str(args[1]).startswith(folder):
            writes.append(str(args[1]))

    sys.addaudithook(hook)
    return writes


def main(argv: list[str]) -> None:
    data, behavior, out, record, overrides = argv
    writes = _watch_writes(os.path.abspath(out))
    final: dict = {}

    class RecordingTrainer(run.QSFTTrainer):
        def train(self, *args, **kwargs):
            result = super().train(*args, **kwargs)
            model = self.accelerator.unwrap_model(self.model)
            final["weights"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            final["losses"] = [entry["loss"] for entry in self.state.log_history if "loss" in entry]
            return result

    run.QSFTTrainer = RecordingTrainer  # the real training path, observed from inside
    run.train("qsft", data, "tiny", out, dict(json.loads(overrides), behavior=behavior))
    torch.save({**final, "writes": list(writes)}, f"{record}.rank{os.environ.get('RANK', '0')}.pt")


if __name__ == "__main__":
    main(sys.argv[1:])
