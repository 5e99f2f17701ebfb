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

from qsft.data.episode import Episode
from qsft.training.base import OfflineRLTrainer


def transition_windows(episodes: list[Episode], history_turns: int) -> list[Episode]:
    """Each agent turn as its own short transcript: its last `history_turns` turns of context, the move,
    and the observation it leads to. With `history_turns` the model still learns every transition, where
    whole long episodes would be cut to their last `max_length` tokens."""
    windows = []
    for episode in episodes:
        turns = episode.turns
        for i, turn in enumerate(turns):
            if turn.role != "agent":
                continue
            end = i + 2 if i + 1 < len(turns) and turns[i + 1].role == "env" else i + 1
            window = turns[max(0, i - history_turns):end]
            windows.append(Episode(f"{episode.id}#{i}", window, window[-1].role == "agent", dict(episode.meta)))
    return windows


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
