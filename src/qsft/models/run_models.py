"""Rebuilding a trained run's models for decoding/evaluation, full-size or LoRA alike."""

from __future__ import annotations

from pathlib import Path

import torch

from qsft.errors import ModelLoadError
from qsft.models.loading import load_model
from qsft.models.lora import merged_model
from qsft.run_info import RunInfo


def load_run_models(run_dir: str | Path, dtype: torch.dtype | None = None):
    """(model, behavior_model) of a run written by `qsft train`; behavior_model is None when the run has none.

    `model` is the run's trained model (the Q-model of a Q-SFT run). A LoRA run stores adapters on
    a shared base (qsft.json: `lora`, `base_model`); each is merged into its own copy of the base,
    so callers always get plain Hugging Face causal LMs. ILQL runs need
    `qsft.training.ilql.load_ilql_policy` instead (their heads are not part of the LM).
    """
    run_dir = Path(run_dir)
    info = RunInfo.load(run_dir)
    behavior_dir = info.behavior_path(run_dir)
    if not info.lora:
        return load_model(run_dir, dtype), load_model(behavior_dir, dtype) if behavior_dir is not None else None
    base_dir = info.base_path(run_dir)
    if base_dir is None:
        raise ModelLoadError(f"{run_dir}/qsft.json marks a LoRA run but names no base_model")
    model = merged_model(load_model(base_dir, dtype), run_dir)
    behavior = merged_model(load_model(base_dir, dtype), behavior_dir) if behavior_dir is not None else None
    return model, behavior
