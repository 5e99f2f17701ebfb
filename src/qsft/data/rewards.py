"""Reward transforms into [0, 1] (DESIGN §1.3) and the partial-return check.

Q-SFT's targets are probabilities, so every discounted partial return must lie in [0, 1].
A transform is named by a spec string (CLI-friendly):
* ``none``                      rewards used as logged (checked only);
* ``scale`` / ``scale:RMAX``    r' = r / RMAX; rewards must be >= 0. Without RMAX it is the largest
  discounted partial return in the data, max over episodes and agent turns k of
  sum_{j>=k} gamma^(j-k) r_j, so every partial return lands in [0, 1];
* ``episode_return`` / ``episode_return:LO:HI``  sparse: the episode's undiscounted return,
  min-max normalised from the data (or the declared LO..HI, clipped), paid on the last agent turn;
* ``success``                   1 on the last agent turn of episodes whose ``meta.success`` is true.

Truncated episodes (``done`` false) under ``episode_return`` are paid nothing: a time limit is not
an ending (Pardo et al. 2018, "Time Limits in Reinforcement Learning"), so the token MDP keeps the
bootstrap from the final observation, and that bootstrap already stands for the episode's value;
paying the partial return as well would count it twice. LO/HI from the data come from every
episode's return: a truncated return is partial, but it is still a return the data reached (the chain
oracle's ended episodes all succeed, so ended-only bounds would map every return to 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from qsft.data.episode import Episode
from qsft.errors import ConfigError, EpisodeFormatError, RewardRangeError

TOLERANCE = 1e-6

# What to do when a partial return leaves [0, 1], by the transform that produced the rewards.
ADVICE = {
    None: "pick --reward_transform scale, episode_return or success",
    "none": "'none' uses rewards as logged; pick --reward_transform scale (rewards >= 0), "
            "episode_return (any rewards) or success (meta.success)",
    "scale": "use --reward_transform scale without an argument (it divides by the largest discounted "
             "partial return in the data) or episode_return",
    "episode_return": "'episode_return' keeps every partial return in [0, 1] by construction: this is a "
                      "qsft bug, please report it",
    "success": "'success' keeps every partial return in [0, 1] by construction: this is a qsft bug, "
               "please report it",
}


@dataclass
class RewardReport:
    """What a transform did, to print and to store with the run."""

    transform: str
    raw_min_reward: float
    raw_max_reward: float
    raw_min_return: float
    raw_max_return: float
    low: float | None = None
    high: float | None = None
    episodes: int = 0
    truncated_unpaid: int = 0  # episode_return: truncated episodes paid 0 (their bootstrap stands)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        bounds = f", bounds [{self.low:g}, {self.high:g}]" if self.low is not None else ""
        unpaid = (f"; {self.truncated_unpaid} truncated episodes paid 0 (bootstrapped)"
                  if self.truncated_unpaid else "")
        return (f"reward transform '{self.transform}'{bounds} on {self.episodes} episodes "
                f"(raw rewards {self.raw_min_reward:g}..{self.raw_max_reward:g}, "
                f"returns {self.raw_min_return:g}..{self.raw_max_return:g}){unpaid}")


def parse_spec(spec: str) -> tuple[str, list[float]]:
    name, *args = spec.split(":")
    if name not in ("none", "scale", "episode_return", "success"):
        raise ConfigError(f"unknown reward transform {spec!r}; use none, scale[:RMAX], "
                          "episode_return[:LO:HI] or success")
    try:
        values = [float(a) for a in args]
    except ValueError:
        raise ConfigError(f"reward transform {spec!r}: arguments must be numbers") from None
    expected = {"none": (0,), "scale": (0, 1), "episode_return": (0, 2), "success": (0,)}[name]
    if len(values) not in expected:
        raise ConfigError(f"reward transform {spec!r}: wrong number of arguments")
    if name == "episode_return" and values and values[0] >= values[1]:
        raise ConfigError(f"reward transform {spec!r}: LO must be below HI")
    if name == "scale" and values and values[0] <= 0:
        raise ConfigError(f"reward transform {spec!r}: RMAX must be positive")
    return name, values


def partial_returns(rewards: list[float], gamma: float) -> list[float]:
    """Discounted return from each agent turn k: sum_{j>=k} gamma^(j-k) r_j."""
    out = [0.0] * len(rewards)
    partial = 0.0
    for k in range(len(rewards) - 1, -1, -1):
        partial = rewards[k] + gamma * partial
        out[k] = partial
    return out


def returns_to_go(episodes: list[Episode], gamma: float) -> list[Episode]:
    """Copies whose agent turns carry their discounted return-to-go (`partial_returns`) as the reward: the
    Monte-Carlo targets of `--algo mc`, placed where the token MDP puts a turn's reward (its last token)."""
    return [ep.with_rewards(partial_returns(ep.rewards, gamma)) for ep in episodes]


def apply_reward_transform(
    episodes: list[Episode], spec: str, gamma: float, low: float | None = None, high: float | None = None
) -> tuple[list[Episode], RewardReport]:
    """Transform rewards per `spec`, check every partial return is in [0, 1], report what was done.

    `low`/`high` (e.g. from a training run's stored report) override data bounds for
    `episode_return` (and `high` the divisor of a bare `scale`), so evaluation-time data is
    normalised exactly as training data was.
    """
    name, args = parse_spec(spec)
    rewards = [r for ep in episodes for r in ep.rewards]
    returns = [ep.total_return for ep in episodes]
    report = RewardReport(spec, min(rewards), max(rewards), min(returns), max(returns), episodes=len(episodes))
    if name == "none":
        out = list(episodes)
    elif name == "scale":
        r_max, source = (args[0], "RMAX") if args else (high, "the training run's bound")
        r_max = _scale_divisor(episodes, gamma, r_max, source)
        report.low, report.high = 0.0, float(r_max)
        out = [ep.with_rewards([r / r_max for r in ep.rewards]) for ep in episodes]
    elif name == "episode_return":
        lo, hi = (args if args else (low, high) if low is not None else (min(returns), max(returns)))
        if hi <= lo:
            hi = lo + 1.0  # every return equal: map them all to 0 rather than divide by zero
        report.low, report.high = float(lo), float(hi)
        out = []
        for ep in episodes:
            sparse = [0.0] * len(ep.rewards)
            if ep.done:
                sparse[-1] = min(max((ep.total_return - lo) / (hi - lo), 0.0), 1.0)
            else:
                report.truncated_unpaid += 1
            out.append(ep.with_rewards(sparse))
    else:  # success
        out = []
        for ep in episodes:
            if "success" not in ep.meta:
                raise EpisodeFormatError("the 'success' reward transform needs meta.success on every "
                                         "episode", episode_id=ep.id, field="meta.success")
            sparse = [0.0] * len(ep.rewards)
            sparse[-1] = 1.0 if ep.meta["success"] else 0.0
            out.append(ep.with_rewards(sparse))
        report.low, report.high = 0.0, 1.0
    for ep in out:
        check_partial_returns(ep, gamma, name)
    return out, report


def _scale_divisor(episodes: list[Episode], gamma: float, r_max: float | None, source: str) -> float:
    """RMAX for `scale`: the given one if it bounds every discounted partial return, else the data's bound."""
    bound, where = 0.0, None
    for ep in episodes:
        for k, r in enumerate(ep.rewards):
            if r < 0:
                raise RewardRangeError(f"reward {r:g} < 0 cannot be scaled into [0, 1]; use "
                                       "--reward_transform episode_return", episode_id=ep.id,
                                       field=f"agent turn {k}.reward")
        for k, partial in enumerate(partial_returns(ep.rewards, gamma)):
            if partial > bound:
                bound, where = partial, (ep.id, k)
    if where is None:
        raise RewardRangeError("all rewards are 0: nothing to learn (scale needs a positive maximum)")
    if r_max is None:
        return bound
    if bound > r_max * (1 + TOLERANCE):
        episode_id, turn = where
        raise RewardRangeError(
            f"scale divides by {source} {r_max:g}, but the discounted return from agent turn {turn} is "
            f"{bound:.10g} (gamma {gamma:g}), the largest in the data; use --reward_transform scale without an "
            f"argument (divides by that bound) or scale:{bound:.10g} or more", episode_id=episode_id,
            field=f"agent turn {turn}.reward")
    return r_max


def check_partial_returns(episode: Episode, gamma: float, transform: str | None = None) -> None:
    """Raise `RewardRangeError` naming the episode if a discounted partial return leaves [0, 1].

    `transform`: the spec (or its name) that produced the rewards, to tailor the advice.
    """
    advice = ADVICE.get(transform.split(":")[0] if transform else None, ADVICE[None])
    rewards = episode.rewards
    for k, partial in reversed(list(enumerate(partial_returns(rewards, gamma)))):
        if rewards[k] < -TOLERANCE or not -TOLERANCE <= partial <= 1 + TOLERANCE:
            raise RewardRangeError(
                f"discounted return from agent turn {k} is {partial:g} (reward {rewards[k]:g}); Q-SFT needs "
                f"rewards >= 0 and every partial return in [0, 1]: {advice}",
                episode_id=episode.id, field=f"agent turn {k}.reward")
