"""Behavior cloning (SFT on agent tokens): the baseline, and how the behavior model is trained."""

from __future__ import annotations

from qsft.algorithms.qsft import behavior_cloning_loss
from qsft.training.base import OfflineRLTrainer


class BCTrainer(OfflineRLTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = self.logits(model, inputs["input_ids"], inputs["attention_mask"], inputs.get("pixel_values"))
        loss = behavior_cloning_loss(logits, inputs["input_ids"], inputs["action_mask"])
        self.record("loss/behavior", loss.item())
        return (loss, logits) if return_outputs else loss
