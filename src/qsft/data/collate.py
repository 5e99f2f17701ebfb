"""Padding token-MDP samples into batches of tensors (right padding).

With a VLM's `VisionInputs`, the images of the samples become `pixel_values` (and those of the
bootstrap contexts `next_pixel_values`): [N, 3, H, W], concatenated in row order, which is the order
in which the model fills the image placeholders of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from qsft.data.tokenize import EXTERNAL_NEXT_STATE, TERMINAL, TokenizedEpisode


@dataclass
class BehaviorRows:
    """One sample's rows of the behavior cache (`qsft.models.behavior_cache`): sparse pi_beta at its next states."""

    state_index: torch.Tensor  # [S] long, logits positions (sorted), then EXTERNAL_NEXT_STATE if any
    support_ids: torch.Tensor  # [S, W] long, each state's whole support; W = the widest (>= 1), padding ids 0
    support_logprobs: torch.Tensor  # [S, W] float32, -inf padding
    action_logprobs: torch.Tensor  # [T] float32, log pi_beta(x_t | x_<t)


@dataclass
class CachedSample:
    """A sample with its behavior-cache rows (what `BehaviorCachedDataset` yields)."""

    sample: TokenizedEpisode
    behavior: BehaviorRows


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

    def __init__(self, pad_token_id: int, bos_token_id: int, vision=None) -> None:
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.vision = vision  # qsft.data.images.VisionInputs of a VLM, else None

    def __call__(self, samples: list[TokenizedEpisode] | list[CachedSample]) -> dict[str, torch.Tensor]:
        cached = [s.behavior for s in samples] if isinstance(samples[0], CachedSample) else None
        samples = [s.sample for s in samples] if cached else samples
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
            "return_to_go": pad([s.return_to_go or [0.0] * len(s) for s in samples], 0.0, torch.float32),
        }
        if any(s.next_input_ids is not None for s in samples):
            nexts = [s.next_input_ids or [self.bos_token_id] for s in samples]
            next_length = max(len(n) for n in nexts)
            batch["next_input_ids"] = torch.tensor(
                [n + [self.pad_token_id] * (next_length - len(n)) for n in nexts], dtype=torch.long)
            batch["next_attention_mask"] = torch.tensor(
                [[1] * len(n) + [0] * (next_length - len(n)) for n in nexts], dtype=torch.long)
        if self.vision is not None:
            images = [image for s in samples for image in s.images]
            if images:
                batch["pixel_values"] = self.vision.pixel_values(images)
            next_images = [image for s in samples for image in s.next_images]
            if next_images and "next_input_ids" in batch:
                batch["next_pixel_values"] = self.vision.pixel_values(next_images)
        if cached:
            batch.update(_behavior_batch(cached, length))
        return batch


def _behavior_batch(rows: list[BehaviorRows], length: int) -> dict[str, torch.Tensor]:
    """Cached pi_beta as padded tensors: in-sequence states [B, S(, W)] (index -1 = padding), external [B, W].

    W is the widest support in the batch (each below 1 / support_threshold), so memory follows the data.
    """
    width = max(r.support_ids.shape[1] for r in rows)
    inside = [r.state_index >= 0 for r in rows]
    states = max(int(m.sum()) for m in inside)
    index = torch.full((len(rows), states), -1, dtype=torch.long)
    ids = torch.zeros(len(rows), states, width, dtype=torch.long)
    logprobs = torch.full((len(rows), states, width), float("-inf"))
    next_ids = torch.zeros(len(rows), width, dtype=torch.long)
    next_logprobs = torch.full((len(rows), width), float("-inf"))
    action_logprobs = torch.zeros(len(rows), length)
    for b, (r, m) in enumerate(zip(rows, inside)):
        n, w = int(m.sum()), r.support_ids.shape[1]
        index[b, :n] = r.state_index[m]
        ids[b, :n, :w], logprobs[b, :n, :w] = r.support_ids[m], r.support_logprobs[m]
        external = r.state_index == EXTERNAL_NEXT_STATE
        if external.any():
            next_ids[b, :w], next_logprobs[b, :w] = r.support_ids[external][0], r.support_logprobs[external][0]
        action_logprobs[b, :len(r.action_logprobs)] = r.action_logprobs
    return {"behavior_state_index": index, "behavior_support_ids": ids, "behavior_support_logprobs": logprobs,
            "behavior_next_support_ids": next_ids, "behavior_next_support_logprobs": next_logprobs,
            "behavior_action_logprobs": action_logprobs}
