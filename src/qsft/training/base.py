"""Shared trainer base: token-MDP batches in, averaged custom metrics out, NaN guard."""

from __future__ import annotations

import math
import signal
import threading
from collections import defaultdict
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from qsft.data.collate import TokenMDPCollator
from qsft.errors import NumericalError, TrainingInterrupted
from qsft.models.loading import bos_token_id
from qsft.models.lora import is_lora_model, load_adapter_into


class _InterruptCallback(TrainerCallback):
    """Turns a SIGINT into 'save a checkpoint after this step, then stop'."""

    def __init__(self) -> None:
        self.requested = False

    def handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C: stop now, without waiting for the step to end
            raise KeyboardInterrupt
        self.requested = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control


class OfflineRLTrainer(Trainer):
    """A `transformers.Trainer` over `TokenMDPDataset`s; subclasses only write `compute_loss`."""

    def __init__(self, model, args, train_dataset, processing_class, data_collator=None, **kwargs) -> None:
        if data_collator is None:
            data_collator = TokenMDPCollator(processing_class.pad_token_id, bos_token_id(processing_class))
        super().__init__(model=model, args=args, train_dataset=train_dataset, data_collator=data_collator,
                         processing_class=processing_class, **kwargs)
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def train(self, *args, **kwargs):
        """`Trainer.train`, plus: SIGINT saves a complete checkpoint and raises `TrainingInterrupted`.

        Nothing is written as if the run had finished (no final model, no qsft.json), so a later
        `--resume_from_checkpoint auto` continues exactly where it stopped.
        """
        interrupt = _InterruptCallback()
        self.add_callback(interrupt)
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, interrupt.handle)
        try:
            output = super().train(*args, **kwargs)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            self.remove_callback(interrupt)
        if interrupt.requested:
            from qsft.training.checkpoints import latest_complete_checkpoint

            checkpoint = latest_complete_checkpoint(self.args.output_dir)
            raise TrainingInterrupted(
                f"interrupted at step {self.state.global_step}; checkpoint saved to {checkpoint}. "
                "Resume with --resume_from_checkpoint auto (same command otherwise).")
        return output

    @staticmethod
    def logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, V]; `pixel_values` ([N, 3, H, W], the batch's images in order) only for vision-language models."""
        images = {} if pixel_values is None else {"pixel_values": pixel_values}
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **images).logits

    @classmethod
    def last_logits(cls, model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Logits at each row's last real (right-padded) position: [B, V]."""
        logits = cls.logits(model, input_ids, attention_mask, pixel_values)
        last = attention_mask.sum(1) - 1
        return logits[torch.arange(input_ids.shape[0], device=logits.device), last]

    def trained_adapters(self, model) -> list[str]:
        """LoRA adapters whose weights this trainer changes (restored from checkpoints on resume)."""
        return [model.active_adapter]

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        peft_model = self.accelerator.unwrap_model(model if model is not None else self.model)
        if not is_lora_model(peft_model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        # The Trainer's own PEFT path re-creates adapters through peft and resets which one is
        # trainable; load the weights in place instead (peft saves adapter X in checkpoint-N/X/).
        for adapter in self.trained_adapters(peft_model):
            load_adapter_into(peft_model, adapter, Path(resume_from_checkpoint) / adapter)

    def record(self, name: str, value: float) -> None:
        if not math.isfinite(value):
            raise NumericalError(
                f"step {self.state.global_step}: {name} is {value}. Usual causes: a learning rate that diverges "
                "(lower --learning_rate), behavior probabilities underflowing (raise --support_threshold), or "
                "rewards outside [0, 1]. No weights were written for this step.")
        self._metrics[name].append(value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._metrics:
            logs.update({name: sum(v) / len(v) for name, v in self._metrics.items()})
            self._metrics.clear()
        super().log(logs, start_time)
