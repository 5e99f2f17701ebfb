"""How long a run will take, measured on its first steps and said once (CPU runs on GPU-sized defaults)."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta

import torch
from transformers import TrainerCallback

WARMUP_STEPS = 1  # the first step pays one-off costs (allocations, lazy imports): not counted
MEASURED_STEPS = 3


def no_gpu() -> bool:
    return not torch.cuda.is_available()


def eta_line(seconds_per_step: float, steps_left: int, now: datetime) -> str:
    """One line: the measured pace, the time left and the clock time it ends."""
    left = seconds_per_step * steps_left
    finish = (now + timedelta(seconds=left)).strftime("%H:%M")
    minutes = f"{left / 60:.0f} min" if left >= 90 else f"{left:.0f} s"
    return (f"qsft: {seconds_per_step:.2f} s/step measured; {steps_left} steps left take about {minutes} "
            f"(until ~{finish}). For a shorter run: --max_steps N, or --config with an environment YAML "
            "(src/qsft/configs/)")


class CpuEtaCallback(TrainerCallback):
    """Prints `eta_line` once, after `MEASURED_STEPS` steps past the warm-up, to `stream` (stdout: stderr is
    for errors, one line each)."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.started: float | None = None
        self.done = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.done:
            return control
        if state.global_step == WARMUP_STEPS:
            self.started = time.perf_counter()
        elif self.started is not None and state.global_step == WARMUP_STEPS + MEASURED_STEPS:
            pace = (time.perf_counter() - self.started) / MEASURED_STEPS
            print(eta_line(pace, max(state.max_steps - state.global_step, 0), datetime.now()), file=self.stream,
                  flush=True)
            self.done = True
        return control
