"""Target network: a frozen copy of the Q-model, moved by Polyak averaging or hard copies.

The updates take modules or matching lists of tensors, so the same code moves a full-size
target model and a LoRA "target" adapter (`qsft.models.lora.adapter_pairs`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch

Parameters = torch.nn.Module | Iterable[torch.Tensor]


def make_target(model: torch.nn.Module) -> torch.nn.Module:
    target = copy.deepcopy(model)
    target.requires_grad_(False)
    return target.eval()


def _tensors(params: Parameters) -> Iterable[torch.Tensor]:
    return params.parameters() if isinstance(params, torch.nn.Module) else params


@torch.no_grad()
def polyak_update(target: Parameters, source: Parameters, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, parameter by parameter."""
    for t, s in zip(_tensors(target), _tensors(source), strict=True):
        t.lerp_(s.detach().to(t.dtype), tau)


@torch.no_grad()
def hard_update(target: Parameters, source: Parameters) -> None:
    for t, s in zip(_tensors(target), _tensors(source), strict=True):
        t.copy_(s.detach())
