"""Policy extraction (DESIGN §1.5): from the Q-model's (and behavior model's) logits to pi(a|s).

Every rule returns *policy logits* — log pi(a|s) up to a constant per row — so sampling is a
softmax and greedy decoding an argmax. Notation: p = p_theta(a|s) (Q-model probabilities),
pi_b = pi_beta(a|s) (behavior model), q_hat = p / pi_b, S(s) = {a : pi_b(a|s) > support_threshold}.

* ``p_theta``    log pi = log p                                 (one model)
* ``beta``       log pi = log pi_b + beta * p                   (the paper's extraction rule)
* ``beta_ratio`` log pi = log pi_b + beta * q_hat on S(s)       (ILQL-style perturbation)
* ``q_greedy``   pi = one-hot argmax_{a in S(s)} q_hat          (greedy in Q)
* ``bc``         log pi = log pi_model                          (behavior / filtered-BC / ILQL runs)
* ``advantage``  log pi = log pi_b + model logits               (ILQL / MC runs with a separate behavior
                                                                 model: the model's logits are beta (Q - V))

The dummy token of the dummy loss variant is a bookkeeping token, never an action: it is set to
-inf in every mode.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor

from qsft.decoding.options import DEFAULT_MODE, MODES, TWO_MODEL_MODES
from qsft.errors import ConfigError

__all__ = ["DEFAULT_MODE", "MODES", "TWO_MODEL_MODES", "PolicyExtractionProcessor", "align_vocab", "check_mode",
           "choose_tokens", "extract_policy_logits", "support_mask"]

NEG_INF = float("-inf")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown decoding mode {mode!r}; choose from {', '.join(MODES)}")
    return mode


def align_vocab(behavior_logits: torch.Tensor, vocab: int) -> torch.Tensor:
    """Behavior logits cut or -inf-padded to the Q-model's width.

    The Q-model can be wider than its behavior model (a dummy token added after the behavior
    model was trained); tokens the behavior model does not have get pi_beta = 0.
    """
    width = behavior_logits.shape[-1]
    if width >= vocab:
        return behavior_logits[..., :vocab]
    pad = behavior_logits.new_full((*behavior_logits.shape[:-1], vocab - width), NEG_INF)
    return torch.cat([behavior_logits, pad], dim=-1)


def support_mask(behavior_logprobs: torch.Tensor, support_threshold: float) -> torch.Tensor:  # [B, V] bool
    """S(s) = {a : pi_beta(a|s) > threshold}, never empty: the behavior argmax is always in it."""
    inside = behavior_logprobs > torch.log(torch.tensor(support_threshold, dtype=behavior_logprobs.dtype))
    best = behavior_logprobs.argmax(dim=-1, keepdim=True)
    return inside.scatter(-1, best, True)


def extract_policy_logits(
    mode: str,
    q_logits: torch.Tensor,  # [B, V] Q-model (or single model) logits
    behavior_logits: torch.Tensor | None = None,  # [B, V'] behavior logits, two-model modes only
    beta: float = 1.0,
    support_threshold: float = 1e-4,
    dummy_token_id: int | None = None,
) -> torch.Tensor:  # [B, V] log pi up to a per-row constant
    """The extraction rule `mode` applied to one decision's logits (see the module docstring)."""
    check_mode(mode)
    q_logprobs = F.log_softmax(q_logits.float(), dim=-1)
    if mode in ("p_theta", "bc"):
        policy = q_logprobs
    elif mode == "advantage":
        if behavior_logits is None:
            raise ConfigError("decoding mode 'advantage' needs the behavior model's logits")
        policy = F.log_softmax(align_vocab(behavior_logits.float(), q_logits.shape[-1]), dim=-1) + q_logits.float()
    else:
        if behavior_logits is None:
            raise ConfigError(f"decoding mode {mode!r} needs the behavior model's logits")
        behavior_logprobs = F.log_softmax(align_vocab(behavior_logits.float(), q_logits.shape[-1]), dim=-1)
        if mode == "beta":
            # pi_b * exp(beta * p): beta = 0 is exactly the behavior policy.
            policy = behavior_logprobs + beta * q_logprobs.exp()
        else:
            inside = support_mask(behavior_logprobs, support_threshold)
            # q_hat is only trusted where pi_b is not tiny: outside S(s) the ratio is unbounded noise.
            q_hat = (q_logprobs - behavior_logprobs).exp().masked_fill(~inside, NEG_INF)
            if dummy_token_id is not None:
                q_hat[..., dummy_token_id] = NEG_INF
            if mode == "beta_ratio":
                policy = (behavior_logprobs + beta * q_hat).masked_fill(~inside, NEG_INF)
            else:
                best = q_hat.argmax(dim=-1, keepdim=True)
                policy = torch.full_like(q_hat, NEG_INF).scatter(-1, best, 0.0)
    if dummy_token_id is not None:
        policy = policy.clone()
        policy[..., dummy_token_id] = NEG_INF
    return policy


class PolicyExtractionProcessor(LogitsProcessor):
    """`transformers.LogitsProcessor` applying an extraction rule to the Q-model's scores.

    `behavior` gives the behavior model's next-token logits for the same `input_ids`; a
    `decoding.generation.CachedLM` runs the behavior model beside the Q-model with its own KV
    cache, so this processor also works inside `model.generate(logits_processor=[...])`.
    """

    def __init__(self, mode: str = DEFAULT_MODE, beta: float = 1.0, support_threshold: float = 1e-4,
                 dummy_token_id: int | None = None,
                 behavior: Callable[[torch.LongTensor], torch.Tensor] | None = None) -> None:
        self.mode = check_mode(mode)
        if mode in TWO_MODEL_MODES and behavior is None:
            raise ConfigError(f"decoding mode {mode!r} needs a behavior model")
        self.beta, self.support_threshold, self.dummy_token_id = beta, support_threshold, dummy_token_id
        self.behavior = behavior if mode in TWO_MODEL_MODES else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        behavior_logits = self.behavior(input_ids) if self.behavior is not None else None
        return extract_policy_logits(self.mode, scores, behavior_logits, self.beta, self.support_threshold,
                                     self.dummy_token_id)


def choose_tokens(policy_logits: torch.Tensor, greedy: bool,
                  generators: list[torch.Generator | None] | None = None) -> torch.Tensor:  # [B] long
    """Greedy argmax, or one sample per row from that row's own generator.

    Drawing row by row from per-episode generators makes a sampled rollout independent of which
    other episodes share its batch (batched == sequential).
    """
    if greedy:
        return policy_logits.argmax(dim=-1)
    probs = torch.softmax(policy_logits.float(), dim=-1)
    rows = [torch.multinomial(probs[b], 1, generator=generators[b] if generators else None)
            for b in range(probs.shape[0])]
    return torch.cat(rows)
