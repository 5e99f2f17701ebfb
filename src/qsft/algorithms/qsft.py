"""Q-SFT: Bellman targets and the weighted cross-entropy (DESIGN §1.3–1.4; Hong et al. 2024, Eq. 3).

Indexing rule (0-based): `logits[:, i]` predicts `input_ids[:, i + 1]`, so the decision for
agent token `t` reads `logits[:, t - 1]`. Per-token arrays (`reward`, `discount`,
`next_state_index`, `action_mask`) are aligned with `input_ids` (token index t);
`next_state_index[t]` is a *logits* position (the state whose max ratio bootstraps token t), or
-1 when token t ends the episode terminally.

Shapes: B batch, T sequence, V vocabulary, N selected agent tokens, K sparse support size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_VARIANTS = ("uniform", "dummy", "support")
DUMMY_VARIANTS = ("dummy", "support")  # the variants whose leftover mass goes to a reserved token
EXTERNAL_NEXT_STATE = -2  # same code as qsft.data.tokenize (algorithms/ imports torch only)
NEG_INF = float("-inf")


@dataclass
class TargetStats:
    """Diagnostics of one batch of Bellman targets (all over agent tokens)."""

    mean: float
    min: float
    max: float
    clipped_fraction: float
    floored_fraction: float = 0.0  # --mc_lower_bound: targets raised to the Monte-Carlo return


BOOTSTRAP_OPERATORS = ("max", "expectile", "expectile_uniform")
EXPECTILE_ITERATIONS = 40  # bisection steps: the bracket shrinks 2^40-fold, far below float32 resolution


def support_value(
    log_ratio: torch.Tensor,  # [n, K] log p_target(a|s) - log pi_beta(a|s); -inf outside the support
    behavior_logprobs: torch.Tensor,  # [n, K] log pi_beta(a|s) (weights of the expectile)
    operator: str = "max",
    expectile: float = 0.9,
) -> torch.Tensor:  # [n]
    """The state value V(s) the Bellman target bootstraps from, over the support S(s).

    max:        V(s) = max_{a in S} p_target/pi_beta                       (the paper's operator)
    expectile:  V(s) = the `expectile` of x_a = min(p_target/pi_beta, 1) under a ~ pi_beta(.|s)
                restricted to S, i.e. the m solving sum_a w_a |tau - 1[x_a < m]| (x_a - m) = 0 (IQL's
                in-support maximum: tau -> 1 is the max, tau = 0.5 the behavior's mean, SARSA).
                Q lies in [0, 1], so a ratio above 1 is estimation error: it is capped at 1 first,
                else one rare action with a wild ratio drags the expectile up by its magnitude.
    expectile_uniform: the same expectile with every action of S weighted equally: a move the data
                takes rarely (but inside the support) counts as much as a common one, so the value
                tracks the best supported move like the max (exact value iteration on the maze's data:
                corr with Q* 0.999 at tau 0.9, against 0.905 under pi_beta's weights; configs/maze.yaml)
                while a single noisy ratio still moves it by a bounded share.
    A state with an empty support gets value 0 (nothing the data supports to bootstrap from).
    """
    if operator not in BOOTSTRAP_OPERATORS:
        raise ValueError(f"bootstrap operator must be one of {BOOTSTRAP_OPERATORS}, got {operator!r}")
    inside = torch.isfinite(log_ratio)
    empty = ~inside.any(dim=-1)
    if operator == "max":
        best = log_ratio.max(dim=-1).values
        return torch.where(empty, torch.zeros_like(best), best.exp())
    values = log_ratio.exp().clamp(max=1.0)  # [n, K], 0 outside
    weights = torch.where(inside, behavior_logprobs.exp() if operator == "expectile" else torch.ones_like(values),
                          torch.zeros_like(values))
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-30)
    low = torch.where(inside, values, torch.full_like(values, float("inf"))).min(-1).values
    high = torch.where(inside, values, torch.zeros_like(values)).max(-1).values
    low = torch.where(empty, torch.zeros_like(low), low)
    for _ in range(EXPECTILE_ITERATIONS):  # the expectile equation is decreasing in m: bisect
        mid = (low + high) / 2
        gap = values - mid[:, None]
        balance = (weights * (expectile * gap.clamp(min=0) + (1 - expectile) * gap.clamp(max=0))).sum(-1)
        above = balance > 0
        low, high = torch.where(above, mid, low), torch.where(above, high, mid)
    return torch.where(empty, torch.zeros_like(low), (low + high) / 2)


def max_ratio_dense(
    target_logits: torch.Tensor,  # [..., V]
    behavior_logits: torch.Tensor,  # [..., V]
    support_threshold: float = 1e-4,
    exclude_token_id: int | None = None,
    chunk_size: int = 4096,
    operator: str = "max",
    expectile: float = 0.9,
    allowed: torch.Tensor | None = None,  # [..., V] bool: a further restriction of the support (data support)
) -> torch.Tensor:  # [...]
    """V(s') from dense logits: by default max_{a : pi_beta(a|s) > threshold} p_target(a|s) / pi_beta(a|s).

    Log space, chunked over rows; `operator`/`expectile` choose the bootstrap (see `support_value`);
    `allowed` (if given) removes further tokens from each row's support (`qsft.data.support`).
    """
    shape, vocab = target_logits.shape[:-1], target_logits.shape[-1]
    target_rows = target_logits.reshape(-1, vocab)
    behavior_rows = behavior_logits.reshape(-1, behavior_logits.shape[-1])[:, :vocab]
    allowed_rows = None if allowed is None else allowed.reshape(-1, allowed.shape[-1])[:, :vocab]
    log_threshold = torch.log(torch.tensor(support_threshold, dtype=torch.float32))
    out = torch.empty(target_rows.shape[0], dtype=torch.float32, device=target_logits.device)
    for start in range(0, target_rows.shape[0], chunk_size):
        tgt = F.log_softmax(target_rows[start:start + chunk_size].float(), dim=-1)  # [n, V]
        beh = F.log_softmax(behavior_rows[start:start + chunk_size].float(), dim=-1)  # [n, V]
        ratio = tgt - beh
        outside = beh <= log_threshold
        if exclude_token_id is not None:
            outside[:, exclude_token_id] = True
        if allowed_rows is not None:
            outside |= ~allowed_rows[start:start + chunk_size].to(outside.device)
        ratio.masked_fill_(outside, NEG_INF)
        if operator != "max":  # compress to the support (|S| < 1 / threshold) before the expectile
            width = max(1, int((~outside).sum(-1).max()))
            beh, ids = beh.masked_fill(outside, NEG_INF).topk(width, dim=-1)
            ratio = ratio.gather(-1, ids)
        out[start:start + chunk_size] = support_value(ratio, beh, operator, expectile)
    return out.reshape(shape)


def max_ratio_sparse(
    target_logits: torch.Tensor,  # [..., V]
    support_ids: torch.Tensor,  # [..., K] long; padding entries have logprob -inf
    support_logprobs: torch.Tensor,  # [..., K] log pi_beta of each support id
    operator: str = "max",
    expectile: float = 0.9,
) -> torch.Tensor:  # [...]
    """Same V(s') as `max_ratio_dense`, with pi_beta given sparsely on its support (behavior cache)."""
    target_logprobs = F.log_softmax(target_logits.float(), dim=-1).gather(-1, support_ids)  # [..., K]
    ratio = (target_logprobs - support_logprobs.float()).masked_fill(~torch.isfinite(support_logprobs), NEG_INF)
    shape = ratio.shape[:-1]
    flat = support_value(ratio.reshape(-1, ratio.shape[-1]), support_logprobs.float().reshape(-1, ratio.shape[-1]),
                         operator, expectile)
    return flat.reshape(shape)


def bellman_targets(
    state_values: torch.Tensor,  # [B, T] max ratio at every logits position (a state)
    reward: torch.Tensor,  # [B, T]
    discount: torch.Tensor,  # [B, T]
    next_state_index: torch.Tensor,  # [B, T] long, -1 = terminal
    action_mask: torch.Tensor,  # [B, T] bool
    external_values: torch.Tensor | None = None,  # [B] value of each row's `next_input_ids` state
    lower_bound: torch.Tensor | None = None,  # [B, T] G_t, the logged return-to-go (--mc_lower_bound)
) -> tuple[torch.Tensor, TargetStats]:
    """y_t = clip(r_t + discount_t * V(s'_t), 0, 1), V(s') = state_values[next_state_index] (0 if terminal).

    next_state_index -2 reads `external_values[b]` (the separate next-state sequence of window mode).
    With `lower_bound`, y_t = clip(max(r_t + discount_t * V(s'_t), G_t), 0, 1): in a deterministic environment
    the logged actions from s_t on are a plan that earns G_t, so Q*(s_t, a_t) >= G_t and Q* stays the max
    operator's fixed point, while values reach far states in one step instead of one bootstrap per turn
    (Monte-Carlo augmented targets, Wilcox et al. 2022). A stochastic environment's lucky returns bias it upward.
    """
    bootstrap = state_values.gather(1, next_state_index.clamp(min=0))
    bootstrap = torch.where(next_state_index >= 0, bootstrap, torch.zeros_like(bootstrap))
    if external_values is not None:
        external = external_values[:, None].expand_as(bootstrap)
        bootstrap = torch.where(next_state_index == EXTERNAL_NEXT_STATE, external, bootstrap)
    raw = reward.float() + discount.float() * bootstrap
    mask = action_mask.bool()
    floored = torch.zeros_like(mask)
    if lower_bound is not None:
        floored = mask & (lower_bound.float() > raw)
        raw = torch.maximum(raw, lower_bound.float())
    targets = raw.clamp(0.0, 1.0)
    selected = raw[mask]
    if selected.numel() == 0:
        stats = TargetStats(0.0, 0.0, 0.0, 0.0)
    else:
        clipped = ((selected < 0) | (selected > 1)).float().mean().item()
        chosen = targets[mask]
        stats = TargetStats(chosen.mean().item(), chosen.min().item(), chosen.max().item(), clipped,
                            floored[mask].float().mean().item())
    return targets.detach(), stats


def _soft_target_rows(
    rows: torch.Tensor,  # [n, V] float32
    actions: torch.Tensor,  # [n]
    targets: torch.Tensor,  # [n]
    variant: str,
    dummy_token_id: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss and softmax for the weighted CE whose soft target puts y on a, the rest per variant."""
    vocab = rows.shape[-1]
    lse = torch.logsumexp(rows, dim=-1)  # [n]
    logp_action = rows.gather(-1, actions[:, None]).squeeze(-1) - lse
    if variant == "uniform":
        # sum_{a' != a} log p(a') = sum(logits) - V * lse - log p(a): no [n, V] target tensor.
        sum_logp_others = rows.sum(-1) - vocab * lse - logp_action
        loss = -(targets * logp_action + (1 - targets) / (vocab - 1) * sum_logp_others)
    else:
        logp_dummy = rows[:, dummy_token_id] - lse
        loss = -(targets * logp_action + (1 - targets) * logp_dummy)
    return loss, lse


class _WeightedCrossEntropy(torch.autograd.Function):
    """Fused weighted CE over selected rows: backward writes softmax - q into one logits-sized buffer."""

    @staticmethod
    def forward(ctx, logits, row_index, actions, targets, variant, dummy_token_id, chunk_size):  # noqa: D401
        flat = logits.reshape(-1, logits.shape[-1])
        losses = torch.empty(row_index.shape[0], dtype=torch.float32, device=logits.device)
        lses = torch.empty_like(losses)
        for start in range(0, row_index.shape[0], chunk_size):
            sl = slice(start, start + chunk_size)
            rows = flat.index_select(0, row_index[sl]).float()
            losses[sl], lses[sl] = _soft_target_rows(rows, actions[sl], targets[sl], variant, dummy_token_id)
        ctx.save_for_backward(logits, row_index, actions, targets, lses)
        ctx.variant, ctx.dummy_token_id, ctx.chunk_size = variant, dummy_token_id, chunk_size
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        logits, row_index, actions, targets, lses = ctx.saved_tensors
        vocab = logits.shape[-1]
        grad = torch.zeros_like(logits).reshape(-1, vocab)
        flat = logits.reshape(-1, vocab)
        for start in range(0, row_index.shape[0], ctx.chunk_size):
            sl = slice(start, start + ctx.chunk_size)
            idx, act, y, g = row_index[sl], actions[sl], targets[sl], grad_losses[sl]
            probs = (flat.index_select(0, idx).float() - lses[sl, None]).exp_()  # softmax, [n, V]
            if ctx.variant == "uniform":
                off = (1 - y) / (vocab - 1)
                probs.sub_(off[:, None])
                probs.scatter_add_(1, act[:, None], (off - y)[:, None])
            else:
                probs.scatter_add_(1, act[:, None], -y[:, None])
                probs[:, ctx.dummy_token_id] -= 1 - y
            grad.index_copy_(0, idx, (probs * g[:, None]).to(grad.dtype))
        return grad.reshape(logits.shape), None, None, None, None, None, None


def weighted_cross_entropy(
    logits: torch.Tensor,  # [B, T, V] Q-model logits over the whole sequence
    input_ids: torch.Tensor,  # [B, T]
    targets: torch.Tensor,  # [B, T] Bellman targets y_t (stop-gradient), aligned with input_ids
    action_mask: torch.Tensor,  # [B, T] bool, True on agent tokens
    variant: str = "uniform",
    dummy_token_id: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:  # [N] per agent token, in row-major (b, t) order
    """uniform: -[y log p(a|s) + (1-y)/(V-1) sum_{a'!=a} log p(a'|s)];  dummy: -[y log p(a|s) + (1-y) log p(d|s)]."""
    if variant not in ("uniform", "dummy"):  # 'support' labels need the target and behavior rows
        raise ValueError(f"weighted_cross_entropy takes 'uniform' or 'dummy', got {variant!r} (the support variant: "
                         "support_soft_labels + soft_label_cross_entropy)")
    if variant == "dummy" and dummy_token_id is None:
        raise ValueError("the dummy variant needs dummy_token_id")
    batch, length, _ = logits.shape
    decisions = action_mask[:, 1:].bool()  # token t >= 1 decided at logits position t - 1
    b_idx, p_idx = decisions.nonzero(as_tuple=True)
    row_index = b_idx * length + p_idx  # rows of logits.reshape(-1, V)
    actions = input_ids[:, 1:][decisions]
    y = targets[:, 1:][decisions].detach().float()
    return _WeightedCrossEntropy.apply(logits, row_index, actions, y, variant, dummy_token_id, chunk_size)


def decision_support(
    behavior_logp: torch.Tensor,  # [n, V] log pi_beta at each decision
    dummy_token_id: int,
    support_threshold: float,
    allowed: torch.Tensor | None = None,  # [n, V] bool: a further restriction of the support
) -> torch.Tensor:  # [n, V] bool
    """S(s) at the decisions of the support variant: pi_beta > threshold, allowed, never the dummy token."""
    inside = behavior_logp > torch.log(torch.tensor(support_threshold, dtype=torch.float32))
    if allowed is not None:
        inside &= allowed[:, :inside.shape[-1]].to(inside.device)
    inside[:, dummy_token_id] = False
    return inside


def support_soft_labels(
    target_rows: torch.Tensor,  # [n, V] p_target logits at each decision (no grad)
    behavior_rows: torch.Tensor,  # [n, V] pi_beta logits at the same rows
    actions: torch.Tensor,  # [n] the data's token at each decision
    targets: torch.Tensor,  # [n] its Bellman target y
    dummy_token_id: int,
    support_threshold: float = 1e-4,
    allowed: torch.Tensor | None = None,  # [n, V] bool: a further restriction of the support
) -> torch.Tensor:  # [n, V] a distribution per row
    """The soft label of the `support` variant (qsft's variance-reduced dummy variant, docs/algorithm.md §4a).

    The dummy variant's label is y on the taken token a and 1 - y on the dummy token, so p_theta(a|s)
    converges to pi_hat(a|s) * y: the data's frequency of a, which the Q-value then divides by the *model*
    pi_beta. Every mismatch pi_hat / pi_beta (an unconverged or noisy behavior model) lands in Q_hat, and
    the label jumps between y and 0 with each sampled action. The support label instead puts
        pi_beta(a|s) * y                on the taken token a,
        min(p_target(a'|s), pi_beta(a'|s)) on every other token a' of the support S(s) (keep its current
                                         value, capped at Q = 1: a ratio above 1 is estimation error),
        the remainder                    on the dummy token (0 elsewhere),
    rescaled to sum to 1 when the first two exceed it. Its expectation over a ~ pi_hat is stationary at
    p_theta(a|s) = pi_beta(a|s) * y(s, a) for every action the data shows, whatever pi_hat is: Q_hat = y.
    """
    behavior_logp = F.log_softmax(behavior_rows.float(), dim=-1)
    labels = torch.minimum(F.softmax(target_rows.float(), dim=-1), behavior_logp.exp())  # Q <= 1
    labels = labels.masked_fill(~decision_support(behavior_logp, dummy_token_id, support_threshold, allowed), 0.0)
    taken = behavior_logp.gather(1, actions[:, None])[:, 0].exp() * targets.float()
    labels.scatter_(1, actions[:, None], taken[:, None])
    total = labels.sum(-1)
    labels = labels / total.clamp_min(1.0)[:, None]
    labels[:, dummy_token_id] = (1.0 - total).clamp_min(0.0)
    return labels


def start_labels(
    behavior_rows: torch.Tensor,  # [n, V] pi_beta logits at each decision
    value: float,
    dummy_token_id: int,
    support_threshold: float = 1e-4,
    allowed: torch.Tensor | None = None,  # [n, V] bool: a further restriction of the support
) -> torch.Tensor:  # [n, V]
    """pi_beta(a|s) * value on every token of the support, the rest on the dummy token: the label whose
    fixed point is Q_hat = value everywhere (the pessimistic start, `--q_start_value`)."""
    behavior_logp = F.log_softmax(behavior_rows.float(), dim=-1)
    inside = decision_support(behavior_logp, dummy_token_id, support_threshold, allowed)
    labels = torch.where(inside, behavior_logp.exp() * value, torch.zeros_like(behavior_logp))
    labels[:, dummy_token_id] = 1.0 - labels.sum(-1)
    return labels


def uniform_support_weights(
    behavior_rows: torch.Tensor,  # [n, V] pi_beta logits at each decision
    actions: torch.Tensor,  # [n] the data's token at each decision
    dummy_token_id: int,
    support_threshold: float,
    cap: float,
    allowed: torch.Tensor | None = None,  # [n, V] bool: a further restriction of the support
) -> torch.Tensor:  # [n]
    """min(cap, (1 / |S(s)|) / pi_beta(a|s)): the importance weight from pi_beta to uniform over the support.

    With the support label a token's value moves only on the rows where the data took it, at a rate
    proportional to how often that is: a 0.5% move is fitted 50 times slower than a 25% one. Weighting
    each row by this ratio makes every supported token's expected update the same size. The stationary
    point does not move (docs/algorithm.md §4a: the label's other entries already sit at their fixed
    point), only the speed; the cap bounds the variance a rare row adds.
    """
    behavior_logp = F.log_softmax(behavior_rows.float(), dim=-1)
    inside = decision_support(behavior_logp, dummy_token_id, support_threshold, allowed)
    inside.scatter_(1, actions[:, None], True)  # the taken token counts whatever the threshold says
    taken = behavior_logp.gather(1, actions[:, None])[:, 0].exp()
    return (1.0 / (inside.sum(-1).float() * taken)).clamp(max=cap)


def soft_label_cross_entropy(
    q_rows: torch.Tensor,  # [n, V] Q-model logits at the decisions (with grad)
    labels: torch.Tensor,  # [n, V] distributions (no grad)
) -> torch.Tensor:  # [n]
    """-sum_v labels[v] log p_theta(v|s) per row."""
    return -(labels * F.log_softmax(q_rows.float(), dim=-1)).sum(-1)


def behavior_cloning_loss(
    logits: torch.Tensor,  # [B, T, V]
    input_ids: torch.Tensor,  # [B, T]
    action_mask: torch.Tensor,  # [B, T]
) -> torch.Tensor:  # scalar
    """-mean over agent tokens of log pi(a_t | s_t): plain SFT on the agent's utterances."""
    decisions = action_mask[:, 1:].bool()
    return F.cross_entropy(logits[:, :-1][decisions].float(), input_ids[:, 1:][decisions])


def action_logprobs(
    logits: torch.Tensor,  # [B, T, V]
    input_ids: torch.Tensor,  # [B, T]
    chunk_size: int = 64,
) -> torch.Tensor:  # [B, T] log p(x_t | x_<t); position 0 is 0
    """Log-probability of every token given its prefix, aligned with input_ids.

    Chunked over the sequence: a gather and a logsumexp per chunk, never a [B, T, V] log_softmax.
    """
    logp = torch.zeros(input_ids.shape, dtype=torch.float32, device=logits.device)
    for start in range(0, input_ids.shape[1] - 1, chunk_size):
        stop = min(start + chunk_size, input_ids.shape[1] - 1)
        rows = logits[:, start:stop].float()  # [B, c, V]
        taken = rows.gather(-1, input_ids[:, start + 1:stop + 1, None]).squeeze(-1)
        logp[:, start + 1:stop + 1] = taken - torch.logsumexp(rows, dim=-1)
    return logp


def q_hat(
    q_logits: torch.Tensor,  # [B, T, V]
    behavior_logits: torch.Tensor,  # [B, T, V]
    input_ids: torch.Tensor,  # [B, T]
) -> torch.Tensor:  # [B, T]
    """Q_hat(s_t, x_t) = p_theta(x_t|s_t) / pi_beta(x_t|s_t) on every token (DESIGN §1.4)."""
    return (action_logprobs(q_logits, input_ids) - action_logprobs(behavior_logits, input_ids)).exp()


@dataclass
class QSFTOutput:
    loss: torch.Tensor  # scalar, mean over agent tokens
    targets: torch.Tensor  # [B, T]
    target_stats: TargetStats
    mean_q_hat: float  # p_theta / pi_beta on the data's actions


def qsft_loss(
    q_logits: torch.Tensor,  # [B, T, V] p_theta (with grad)
    target_logits: torch.Tensor,  # [B, T, V] p_target (no grad)
    behavior_logits: torch.Tensor,  # [B, T, V] pi_beta (no grad)
    input_ids: torch.Tensor,  # [B, T]
    action_mask: torch.Tensor,  # [B, T]
    reward: torch.Tensor,  # [B, T]
    discount: torch.Tensor,  # [B, T]
    next_state_index: torch.Tensor,  # [B, T]
    next_target_logits: torch.Tensor | None = None,  # [B, V] at the end of next_input_ids (window mode)
    next_behavior_logits: torch.Tensor | None = None,  # [B, V]
    variant: str = "uniform",
    dummy_token_id: int | None = None,
    support_threshold: float = 1e-4,
    operator: str = "max",
    expectile: float = 0.9,
    support_reweight_cap: float = 0.0,
    lower_bound: torch.Tensor | None = None,  # [B, T] G_t floor of the targets (`bellman_targets`)
) -> QSFTOutput:
    """The Q-SFT objective: Bellman targets from p_target / pi_beta, then the weighted cross-entropy."""
    exclude = dummy_token_id if variant in DUMMY_VARIANTS else None
    with torch.no_grad():
        state_values = max_ratio_dense(target_logits, behavior_logits, support_threshold, exclude,
                                       operator=operator, expectile=expectile)  # [B, T]
        external = None
        if next_target_logits is not None:
            external = max_ratio_dense(next_target_logits, next_behavior_logits, support_threshold, exclude,
                                       operator=operator, expectile=expectile)
        behavior_action_logprobs = action_logprobs(behavior_logits, input_ids)
    decisions = action_mask[:, 1:].bool()
    return qsft_loss_from_values(q_logits, state_values, behavior_action_logprobs, input_ids, action_mask, reward,
                                 discount, next_state_index, external, variant, dummy_token_id,
                                 target_logits[:, :-1][decisions], behavior_logits[:, :-1][decisions],
                                 support_threshold, support_reweight_cap=support_reweight_cap,
                                 lower_bound=lower_bound)


def qsft_loss_from_values(
    q_logits: torch.Tensor,  # [B, T, V] p_theta (with grad)
    state_values: torch.Tensor,  # [B, T] V(s) at every logits position the targets read (no grad)
    behavior_action_logprobs: torch.Tensor,  # [B, T] log pi_beta(x_t | x_<t), for the q_hat diagnostic
    input_ids: torch.Tensor,  # [B, T]
    action_mask: torch.Tensor,  # [B, T]
    reward: torch.Tensor,  # [B, T]
    discount: torch.Tensor,  # [B, T]
    next_state_index: torch.Tensor,  # [B, T]
    external_values: torch.Tensor | None = None,  # [B] V at the end of next_input_ids (window mode)
    variant: str = "uniform",
    dummy_token_id: int | None = None,
    decision_target_logits: torch.Tensor | None = None,  # [N, V] p_target at the decisions (support variant)
    decision_behavior_logits: torch.Tensor | None = None,  # [N, V] pi_beta at the decisions (support variant)
    support_threshold: float = 1e-4,
    decision_allowed: torch.Tensor | None = None,  # [N, V] bool (support variant, --support data)
    support_reweight_cap: float = 0.0,  # support variant: rows weighted by uniform_support_weights (0 = off)
    lower_bound: torch.Tensor | None = None,  # [B, T] G_t floor of the targets (`bellman_targets`)
) -> QSFTOutput:
    """`qsft_loss` from state values computed elsewhere (only at the states, or from the behavior cache).

    The decision rows (N agent tokens, row-major (b, t) order) are needed by the `support` variant only.
    """
    with torch.no_grad():
        targets, stats = bellman_targets(state_values, reward, discount, next_state_index, action_mask,
                                         external_values, lower_bound)
        decisions = action_mask[:, 1:].bool()
        b_idx, p_idx = decisions.nonzero(as_tuple=True)
        flat = q_logits.detach().reshape(-1, q_logits.shape[-1])  # [B * T, V], a view
        row_index, actions = b_idx * q_logits.shape[1] + p_idx, input_ids[:, 1:][decisions]
        q_logprobs = torch.empty(actions.shape[0], device=q_logits.device)
        for c in range(0, actions.shape[0], 256):  # agent rows only, in chunks: no [N, V] copy
            rows = flat.index_select(0, row_index[c:c + 256]).float()
            q_logprobs[c:c + 256] = rows.gather(1, actions[c:c + 256, None])[:, 0] - torch.logsumexp(rows, -1)
        ratio = (q_logprobs - behavior_action_logprobs[:, 1:][decisions].float()).exp()
        mean_q_hat = ratio.mean().item() if ratio.numel() else 0.0
    if variant == "support":
        if decision_target_logits is None or decision_behavior_logits is None or dummy_token_id is None:
            raise ValueError("the support variant needs the target and behavior logits at the decisions and the "
                             "dummy token id")
        with torch.no_grad():
            labels = support_soft_labels(decision_target_logits, decision_behavior_logits, actions,
                                         targets[:, 1:][decisions], dummy_token_id, support_threshold,
                                         decision_allowed)
        per_token = soft_label_cross_entropy(q_logits[:, :-1][decisions], labels)
        if support_reweight_cap > 0:
            weights = uniform_support_weights(decision_behavior_logits, actions, dummy_token_id,
                                              support_threshold, support_reweight_cap, decision_allowed)
            per_token = per_token * weights
    else:
        per_token = weighted_cross_entropy(q_logits, input_ids, targets, action_mask, variant, dummy_token_id)
    loss = per_token.mean() if per_token.numel() else q_logits.sum() * 0.0
    return QSFTOutput(loss, targets, stats, mean_q_hat)
