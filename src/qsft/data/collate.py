"""Padding token-MDP samples into batches of tensors (right padding)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from qsft.data.tokenize import TERMINAL, TokenizedEpisode


class TokenMDPDataset(Dataset):
    """A list of `TokenizedEpisode`s as a torch Dataset (what the trainers consume)."""

    def __init__(self, samples: list[TokenizedEpisode]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> TokenizedEpisode:
        return self.samples[index]


class TokenMDPCollator:
    """Pads a list of samples; `next_input_ids` (window mode) become a second padded batch."""

    def __init__(self, pad_token_id: int, bos_token_id: int) -> None:
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id

    def __call__(self, samples: list[TokenizedEpisode]) -> dict[str, torch.Tensor]:
        length = max(len(s) for s in samples)

        def pad(values: list, fill, dtype) -> torch.Tensor:
            return torch.tensor([v + [fill] * (length - len(v)) for v in values], dtype=dtype)

        batch = {
            "input_ids": pad([s.input_ids for s in samples], self.pad_token_id, torch.long),
            "attention_mask": pad([[1] * len(s) for s in samples], 0, torch.long),
            "action_mask": pad([s.action_mask for s in samples], 0, torch.bool),
            "reward": pad([s.reward for s in samples], 0.0, torch.float32),
            "discount": pad([s.discount for s in samples], 0.0, torch.float32),
            "next_state_index": pad([s.next_state_index for s in samples], TERMINAL, torch.long),
        }
        if any(s.next_input_ids is not None for s in samples):
            nexts = [s.next_input_ids or [self.bos_token_id] for s in samples]
            next_length = max(len(n) for n in nexts)
            batch["next_input_ids"] = torch.tensor(
                [n + [self.pad_token_id] * (next_length - len(n)) for n in nexts], dtype=torch.long)
            batch["next_attention_mask"] = torch.tensor(
                [[1] * len(n) + [0] * (next_length - len(n)) for n in nexts], dtype=torch.long)
        return batch
