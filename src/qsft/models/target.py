"""Target network: a frozen copy of the Q-model, moved by Polyak averaging or hard copies."""

from __future__ import annotations

import copy

import torch


def make_target(model: torch.nn.Module) -> torch.nn.Module:
    target = copy.deepcopy(model)
    target.requires_grad_(False)
    return target.eval()


@torch.no_grad()
def polyak_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, parameter by parameter."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s.detach().to(t.dtype), tau)


@torch.no_grad()
def hard_update(target: torch.nn.Module, source: torch.nn.Module) -> None:
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.copy_(s.detach())
