"""The data's support: which agent tokens the dataset shows right after each token (`--support data`).

The Bellman target's max runs over S(s) = {a : pi_beta(a|s) > support_threshold} (the paper). A
behavior model leaves mass on tokens the data never shows in that place (an under-trained one
everywhere; an SFT of a pretrained base on whatever the base liked), and there p_target/pi_beta is the
ratio of two untrained numbers, not a value: measured on the 5-state chain after 1,000 default BC
steps, never-used tokens keep pi_beta ~ 7e-4 and a fresh Q-model gives them 1/V, a ratio of 20 that
wins the max and clips every target at 1. `--support data` (the default) also requires that the data
shows agent token a right after the state's last token x (a bigram of the dataset's agent text, the
observation's last token counting as the predecessor of an utterance's first token). A state whose last
token never precedes an agent token in the data keeps the behavior's support (the data says nothing).

Stored compactly (CSR): sorted predecessor ids, and for each the sorted successor ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from qsft.data.tokenize import TokenizedEpisode

SUPPORT_MODES = ("data", "behavior")


@dataclass
class DataSupport:
    predecessors: torch.Tensor  # [P] long, sorted token ids that precede some agent token
    offsets: torch.Tensor  # [P + 1] long, successor_ids[offsets[i]:offsets[i+1]] follow predecessors[i]
    successor_ids: torch.Tensor  # [E] long

    @classmethod
    def from_samples(cls, samples: Iterable[TokenizedEpisode]) -> DataSupport:
        return cls.from_pairs(agent_bigrams(samples))

    @classmethod
    def from_pairs(cls, pairs: set[tuple[int, int]]) -> DataSupport:
        """From the (predecessor, agent token) pairs of the data (`agent_bigrams`)."""
        ordered = sorted(pairs)
        predecessors = sorted({p for p, _ in ordered})
        counts = np.bincount(np.searchsorted(predecessors, [p for p, _ in ordered]), minlength=len(predecessors))
        return cls(torch.tensor(predecessors, dtype=torch.long),
                   torch.tensor(np.concatenate([[0], np.cumsum(counts)]), dtype=torch.long),
                   torch.tensor([s for _, s in ordered], dtype=torch.long))

    def allowed(self, last_tokens: torch.Tensor, vocab: int) -> torch.Tensor:  # [n, V] bool
        """Row i: the agent tokens the data shows after `last_tokens[i]` (all True for an unseen predecessor).

        Built where `last_tokens` lives (the table is copied to that device once), so a GPU run moves no
        [n, V] mask across the bus each step.
        """
        last = last_tokens.reshape(-1)
        predecessors, offsets, successor_ids = self._on(last.device)
        where = torch.searchsorted(predecessors, last).clamp(max=max(len(predecessors) - 1, 0))
        known = (predecessors[where] == last) if len(predecessors) else torch.zeros_like(last, dtype=torch.bool)
        mask = torch.zeros(len(last), vocab, dtype=torch.bool, device=last.device)
        mask[~known] = True
        rows = known.nonzero()[:, 0]
        if len(rows):
            starts, stops = offsets[where[rows]], offsets[where[rows] + 1]
            lengths = stops - starts
            row_of = torch.repeat_interleave(rows, lengths)
            within = (torch.arange(int(lengths.sum()), device=last.device)
                      - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths))
            columns = successor_ids[torch.repeat_interleave(starts, lengths) + within]
            keep = columns < vocab
            mask[row_of[keep], columns[keep]] = True
        return mask

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The CSR table on `device` (copied once per device)."""
        copies = self.__dict__.setdefault("_copies", {})
        if device not in copies:
            copies[device] = tuple(t.to(device) for t in (self.predecessors, self.offsets, self.successor_ids))
        return copies[device]

    def digest(self) -> str:
        h = hashlib.sha256()
        for tensor in (self.predecessors, self.offsets, self.successor_ids):
            h.update(tensor.numpy().astype(np.int64).tobytes())
            h.update(b"|")
        return h.hexdigest()


def agent_bigrams(samples: Iterable[TokenizedEpisode]) -> set[tuple[int, int]]:
    """Every (token, agent token right after it) pair of the samples."""
    pairs: set[tuple[int, int]] = set()
    for sample in samples:
        ids, mask = sample.input_ids, sample.action_mask
        pairs.update((ids[t - 1], ids[t]) for t in range(1, len(ids)) if mask[t])
    return pairs
