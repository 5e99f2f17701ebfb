"""ILQL: implicit language Q-learning on the token MDP (Snell et al. 2022, §3–4; as in trlx / LMRL-Gym),
and MC returns (LMRL-Gym's "MC"): the same heads regressed on Monte-Carlo returns (`mc_loss`).

The baseline Q-SFT is compared against. A language model gets three extra heads on its last
hidden states: two Q heads over the vocabulary (`q1`, `q2`), their slowly moving target copies,
and a V head. Per agent token t (state s_t = prefix x_<t, action a_t = x_t):

    Q loss:   sum_i (Q_i(s_t, a_t) - (r_t + discount_t * V(s'_t)))^2       V(s') detached, 0 if terminal
    V loss:   |tau - 1(u < 0)| u^2,  u = min_i targetQ_i(s_t, a_t) - V(s_t)  (expectile regression)
    CQL:      sum_i logsumexp_a Q_i(s_t, a) - Q_i(s_t, a_t)
    BC:       -log pi(a_t | s_t) on the LM head
    decoding: log pi_beta(a|s) + beta * (min_i targetQ_i(s, a) - V(s))

Indexing follows `qsft.algorithms.qsft`: position i of every head's output reads the state
x_<=i, so the decision for token t reads position t - 1; per-token arrays (`reward`, `discount`,
`next_state_index`, `action_mask`) are aligned with `input_ids`; `next_state_index[t]` is a
position (-1 terminal, -2 the last position of the separate `next_input_ids` sequence).

Shapes: B batch, T sequence, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qsft.algorithms.qsft import EXTERNAL_NEXT_STATE, behavior_cloning_loss


def _decisions(action_mask: torch.Tensor) -> torch.Tensor:  # [B, T] bool
    """Agent tokens that have a state to read (token 0 has no prefix; it is BOS in practice)."""
    decisions = action_mask.bool().clone()
    decisions[:, 0] = False
    return decisions


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # scalar
    # A batch without agent tokens still yields a graph-connected zero, so backward() works.
    return values[mask].mean() if mask.any() else values.sum() * 0.0


def action_values(
    q_logits: torch.Tensor,  # [B, T, V] a Q head at every position
    input_ids: torch.Tensor,  # [B, T]
) -> torch.Tensor:  # [B, T] aligned with input_ids; position 0 is 0
    """Q(s_t, x_t) = q_logits[t - 1, x_t]."""
    out = torch.zeros(input_ids.shape, dtype=q_logits.dtype, device=q_logits.device)
    out[:, 1:] = q_logits[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return out


def token_state_values(values: torch.Tensor) -> torch.Tensor:  # [B, T] -> [B, T] aligned with input_ids
    """V(s_t) = values[t - 1]: the value of the state each token is decided in (position 0 is 0)."""
    return F.pad(values[:, :-1], (1, 0))


def next_state_values(
    values: torch.Tensor,  # [B, T] V at every position
    next_state_index: torch.Tensor,  # [B, T] long, -1 terminal, -2 external
    external_values: torch.Tensor | None = None,  # [B] V at the end of each row's next_input_ids
) -> torch.Tensor:  # [B, T]
    """V(s'_t) = values[next_state_index[t]]; 0 if terminal; external_values[b] if -2."""
    bootstrap = values.gather(1, next_state_index.clamp(min=0))
    bootstrap = torch.where(next_state_index >= 0, bootstrap, torch.zeros_like(bootstrap))
    if external_values is not None:
        external = external_values[:, None].to(bootstrap.dtype).expand_as(bootstrap)
        bootstrap = torch.where(next_state_index == EXTERNAL_NEXT_STATE, external, bootstrap)
    return bootstrap


def q_targets(
    reward: torch.Tensor,  # [B, T]
    discount: torch.Tensor,  # [B, T] 0 where terminal
    next_values: torch.Tensor,  # [B, T] V(s'_t)
) -> torch.Tensor:  # [B, T] stop-gradient
    """y_t = r_t + discount_t * V(s'_t) (no clip: ILQL regresses, unlike Q-SFT's probabilities)."""
    return (reward.float() + discount.float() * next_values.float()).detach()


def q_regression_loss(
    q_taken: torch.Tensor,  # [B, T] Q_i(s_t, a_t)
    targets: torch.Tensor,  # [B, T] y_t
    action_mask: torch.Tensor,  # [B, T]
) -> torch.Tensor:  # scalar
    """mean over agent tokens of (Q_i(s_t, a_t) - y_t)^2."""
    return _masked_mean((q_taken.float() - targets.detach().float()) ** 2, _decisions(action_mask))


def expectile_loss(
    values: torch.Tensor,  # [B, T] V(s_t), aligned with input_ids
    targets: torch.Tensor,  # [B, T] min_i targetQ_i(s_t, a_t)
    action_mask: torch.Tensor,  # [B, T]
    tau: float = 0.7,
) -> torch.Tensor:  # scalar
    """mean over agent tokens of |tau - 1(u < 0)| u^2, u = target - V: V -> the tau-expectile of Q under pi_beta."""
    u = targets.detach().float() - values.float()
    weight = torch.where(u < 0, 1.0 - tau, tau)
    return _masked_mean(weight * u**2, _decisions(action_mask))


def cql_loss(
    q_logits: torch.Tensor,  # [B, T, V]
    input_ids: torch.Tensor,  # [B, T]
    action_mask: torch.Tensor,  # [B, T]
) -> torch.Tensor:  # scalar
    """mean over agent tokens of logsumexp_a Q(s_t, a) - Q(s_t, a_t): pushes down Q off the data's actions."""
    decisions = _decisions(action_mask)[:, 1:]
    rows = q_logits[:, :-1][decisions].float()  # [N, V]
    if rows.shape[0] == 0:
        return q_logits.sum() * 0.0
    return F.cross_entropy(rows, input_ids[:, 1:][decisions])  # CE with Q as logits is exactly this term


def decoding_logits(
    lm_logits: torch.Tensor,  # [..., V] behavior (LM head) logits
    q1: torch.Tensor,  # [..., V]
    q2: torch.Tensor,  # [..., V]
    values: torch.Tensor,  # [...] V(s)
    beta: float = 1.0,
) -> torch.Tensor:  # [..., V]
    """log pi_beta(a|s) + beta * (min(Q1, Q2)(s, a) - V(s)): the ILQL policy's logits (beta = 0 is BC)."""
    advantage = torch.minimum(q1, q2).float() - values.float()[..., None]
    return F.log_softmax(lm_logits.float(), dim=-1) + beta * advantage


@dataclass
class ILQLOutput:
    loss: torch.Tensor  # scalar: loss_q + loss_v + cql_weight * loss_cql + bc_weight * loss_bc
    loss_q: float  # both heads, summed
    loss_v: float
    loss_cql: float  # both heads, summed
    loss_bc: float
    mean_q: float  # min(Q1, Q2)(s_t, a_t) over agent tokens
    mean_v: float  # V(s_t) over agent tokens


def ilql_loss(
    lm_logits: torch.Tensor,  # [B, T, V] LM head (with grad)
    q1_logits: torch.Tensor,  # [B, T, V] (with grad)
    q2_logits: torch.Tensor,  # [B, T, V] (with grad)
    target_q1_logits: torch.Tensor,  # [B, T, V] (no grad)
    target_q2_logits: torch.Tensor,  # [B, T, V] (no grad)
    values: torch.Tensor,  # [B, T] V head (with grad)
    input_ids: torch.Tensor,  # [B, T]
    action_mask: torch.Tensor,  # [B, T]
    reward: torch.Tensor,  # [B, T]
    discount: torch.Tensor,  # [B, T]
    next_state_index: torch.Tensor,  # [B, T]
    external_values: torch.Tensor | None = None,  # [B] V at the end of next_input_ids (window mode)
    tau: float = 0.7,
    cql_weight: float = 0.1,
    bc_weight: float = 1.0,
) -> ILQLOutput:
    """The ILQL objective (Snell et al. 2022, Eq. 1–3 + CQL + BC), trlx's weighting."""
    targets = q_targets(reward, discount, next_state_values(values.detach(), next_state_index, external_values))
    q1_taken, q2_taken = action_values(q1_logits, input_ids), action_values(q2_logits, input_ids)
    loss_q = q_regression_loss(q1_taken, targets, action_mask) + q_regression_loss(q2_taken, targets, action_mask)
    with torch.no_grad():
        target_q = torch.minimum(action_values(target_q1_logits, input_ids),
                                 action_values(target_q2_logits, input_ids))
    state_v = token_state_values(values)
    loss_v = expectile_loss(state_v, target_q, action_mask, tau)
    return _with_cql_and_bc(loss_q, loss_v, lm_logits, q1_logits, q2_logits, q1_taken, q2_taken, state_v,
                            input_ids, action_mask, cql_weight, bc_weight)


def _with_cql_and_bc(loss_q, loss_v, lm_logits, q1_logits, q2_logits, q1_taken, q2_taken, state_v, input_ids,
                     action_mask, cql_weight: float, bc_weight: float) -> ILQLOutput:
    """loss_q + loss_v + cql_weight * CQL(Q1, Q2) + bc_weight * BC, with the logged means (ILQL and MC alike)."""
    loss_cql = cql_loss(q1_logits, input_ids, action_mask) + cql_loss(q2_logits, input_ids, action_mask)
    loss_bc = behavior_cloning_loss(lm_logits, input_ids, action_mask) if _decisions(action_mask).any() \
        else lm_logits.sum() * 0.0
    loss = loss_q + loss_v + cql_weight * loss_cql + bc_weight * loss_bc
    with torch.no_grad():
        decisions = _decisions(action_mask)
        mean_q = _masked_mean(torch.minimum(q1_taken, q2_taken).float(), decisions).item()
        mean_v = _masked_mean(state_v.float(), decisions).item()
    return ILQLOutput(loss, loss_q.item(), loss_v.item(), loss_cql.item(), loss_bc.item(), mean_q, mean_v)


def mc_returns(
    reward: torch.Tensor,  # [B, T] each agent turn's return-to-go on its last token (`qsft.data.rewards.returns_to_go`)
    next_state_index: torch.Tensor,  # [B, T] long; == t inside an utterance (its next state is the prefix x_<=t)
    action_mask: torch.Tensor,  # [B, T]
) -> torch.Tensor:  # [B, T] float32, 0 off agent tokens
    """G_t for every agent token: its turn's return-to-go, carried back over the utterance's tokens
    (inside an utterance the reward is 0 and the discount 1, so every token of a turn has the turn's return)."""
    positions = torch.arange(reward.shape[1], device=reward.device)
    agent = action_mask.bool()
    continues = agent & (next_state_index == positions)  # token t is followed by token t + 1 of its utterance
    out = torch.zeros(reward.shape, dtype=torch.float32, device=reward.device)
    carry = torch.zeros(reward.shape[0], dtype=torch.float32, device=reward.device)
    for t in range(reward.shape[1] - 1, -1, -1):
        carry = reward[:, t].float() + torch.where(continues[:, t], carry, torch.zeros_like(carry))
        out[:, t] = torch.where(agent[:, t], carry, torch.zeros_like(carry))
    return out


def mc_loss(
    lm_logits: torch.Tensor,  # [B, T, V] LM head (with grad)
    q1_logits: torch.Tensor,  # [B, T, V] (with grad)
    q2_logits: torch.Tensor,  # [B, T, V] (with grad)
    values: torch.Tensor,  # [B, T] V head (with grad)
    input_ids: torch.Tensor,  # [B, T]
    action_mask: torch.Tensor,  # [B, T]
    returns: torch.Tensor,  # [B, T] G_t (`mc_returns`)
    cql_weight: float = 0.1,
    bc_weight: float = 1.0,
) -> ILQLOutput:
    """MC returns: sum_i (Q_i(s_t, a_t) - G_t)^2 + (V(s_t) - G_t)^2 + CQL + BC over agent tokens.

    Q regresses the behavior's Q^beta and V its V^beta (no bootstrap, no max): decoding with
    log pi_beta + beta (Q - V) is one step of policy improvement over the data's behavior.
    """
    q1_taken, q2_taken = action_values(q1_logits, input_ids), action_values(q2_logits, input_ids)
    loss_q = q_regression_loss(q1_taken, returns, action_mask) + q_regression_loss(q2_taken, returns, action_mask)
    state_v = token_state_values(values)
    loss_v = q_regression_loss(state_v, returns, action_mask)
    return _with_cql_and_bc(loss_q, loss_v, lm_logits, q1_logits, q2_logits, q1_taken, q2_taken, state_v,
                            input_ids, action_mask, cql_weight, bc_weight)
