"""Domain-adaptive pretraining: causal-LM loss on every token of the transcripts (`qsft pretrain`).

BC and Q-SFT train only on agent tokens. A model that never had to predict an observation has no
reason to read it closely (issue #17: tiny models trained on agent tokens ignore the position digits,
and a 50k-token model never tells the chain's position tokens apart when the behavior is the same in
every state). Predicting the next observation from the current one and the move forces the model to
track the state, so BC, Q-SFT, ILQL and MC all start from a model that already knows the domain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qsft.training.base import OfflineRLTrainer


def transcript_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """-mean over every real token after the first (observations, actions, end-of-turn) of log p(x_t | x_<t)."""
    predicted = attention_mask[:, 1:].bool()  # logits[:, t - 1] predicts input_ids[:, t]
    return F.cross_entropy(logits[:, :-1][predicted].float(), input_ids[:, 1:][predicted])


class PretrainTrainer(OfflineRLTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = self.logits(model, inputs["input_ids"], inputs["attention_mask"], inputs.get("pixel_values"))
        loss = transcript_lm_loss(logits, inputs["input_ids"], inputs["attention_mask"])
        self.record("loss/lm", loss.item())
        return (loss, logits) if return_outputs else loss
