"""Target network: a frozen copy of the Q-model, moved by Polyak averaging or hard copies.

The updates take modules or matching lists of tensors, so the same code moves a full-size
target model and a LoRA "target" adapter (`qsft.models.lora.adapter_pairs`).

A bfloat16 target (half the memory of a float32 copy) is moved by Polyak averaging computed in
float32 and rounded stochastically back to bfloat16: round-to-nearest would drop every update
smaller than half a bfloat16 step (tau * (theta - target) usually is), so the target would stop
moving; stochastic rounding keeps the average exact in expectation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch

Parameters = torch.nn.Module | Iterable[torch.Tensor]


TARGET_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_CHUNK = 1 << 20  # elements per float32 temporary in a bfloat16 Polyak update


def make_target(model: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.nn.Module:
    target = copy.deepcopy(model)
    if dtype is not None:
        target.to(dtype)
    target.requires_grad_(False)
    return target.eval()


def round_stochastic_bf16(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """float32 -> bfloat16, rounding each value's magnitude up with probability (dropped bits) / 2^16.

    bfloat16 is the top 16 bits of a float32: adding uniform noise to the low 16 bits and clearing
    them rounds up exactly when the noise carries over, so E[result] = x (finite x)."""
    bits = x.float().contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=x.device, generator=generator)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def _tensors(params: Parameters) -> Iterable[torch.Tensor]:
    return params.parameters() if isinstance(params, torch.nn.Module) else params


@torch.no_grad()
def polyak_update(target: Parameters, source: Parameters, tau: float,
                  generator: torch.Generator | None = None) -> None:
    """target <- (1 - tau) * target + tau * source, parameter by parameter (bfloat16 targets: computed in
    float32 in chunks, rounded stochastically with `generator`)."""
    for t, s in zip(_tensors(target), _tensors(source), strict=True):
        if t.dtype != torch.bfloat16 or s.dtype == torch.bfloat16:
            t.lerp_(s.detach().to(t.dtype), tau)
            continue
        flat_t, flat_s = t.view(-1), s.detach().reshape(-1)
        for start in range(0, flat_t.numel(), _CHUNK):
            part = slice(start, start + _CHUNK)
            exact = flat_t[part].float().lerp_(flat_s[part].float(), tau)
            flat_t[part] = round_stochastic_bf16(exact, generator)


@torch.no_grad()
def hard_update(target: Parameters, source: Parameters) -> None:
    for t, s in zip(_tensors(target), _tensors(source), strict=True):
        t.copy_(s.detach())
