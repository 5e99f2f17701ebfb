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
    report = reward_report(reward_stats(episodes, gamma), spec, gamma, low, high)
    return transform_rewards(episodes, spec, gamma, report.low, report.high), report


@dataclass
class RewardStats:
    """What the transforms need to know about the whole data, gathered batch by batch (`merge` in data order)."""

    episodes: int
    truncated: int
    min_reward: float
    max_reward: float
    min_return: float
    max_return: float
    # the largest discounted partial return (first in data order) and where: (episode id, agent turn)
    max_partial: float = 0.0
    max_partial_at: tuple[str, int] | None = None
    # the first negative reward in data order: (episode id, agent turn, reward)
    first_negative: tuple[str, int, float] | None = None

    def merge(self, later: RewardStats) -> RewardStats:
        """These statistics followed by `later`'s (data order: the first occurrence wins ties)."""
        partial = (later.max_partial, later.max_partial_at) if later.max_partial > self.max_partial else \
            (self.max_partial, self.max_partial_at)
        return RewardStats(self.episodes + later.episodes, self.truncated + later.truncated,
                           min(self.min_reward, later.min_reward), max(self.max_reward, later.max_reward),
                           min(self.min_return, later.min_return), max(self.max_return, later.max_return),
                           *partial, self.first_negative or later.first_negative)


def reward_stats(episodes: list[Episode], gamma: float) -> RewardStats:
    rewards = [r for ep in episodes for r in ep.rewards]
    returns = [ep.total_return for ep in episodes]
    stats = RewardStats(len(episodes), sum(not ep.done for ep in episodes), min(rewards), max(rewards),
                        min(returns), max(returns))
    for ep in episodes:
        if stats.first_negative is None:
            stats.first_negative = next(((ep.id, k, r) for k, r in enumerate(ep.rewards) if r < 0), None)
        for k, partial in enumerate(partial_returns(ep.rewards, gamma)):
            if partial > stats.max_partial:
                stats.max_partial, stats.max_partial_at = partial, (ep.id, k)
    return stats


def reward_report(stats: RewardStats, spec: str, gamma: float, low: float | None = None,
                  high: float | None = None) -> RewardReport:
    """The report of `spec` on data with these statistics, its `low`/`high` the bounds the transform uses."""
    name, args = parse_spec(spec)
    report = RewardReport(spec, stats.min_reward, stats.max_reward, stats.min_return, stats.max_return,
                          episodes=stats.episodes)
    if name == "scale":
        r_max, source = (args[0], "RMAX") if args else (high, "the training run's bound")
        report.low, report.high = 0.0, float(_scale_divisor(stats, gamma, r_max, source))
    elif name == "episode_return":
        lo, hi = (args if args else (low, high) if low is not None else (stats.min_return, stats.max_return))
        if hi <= lo:
            hi = lo + 1.0  # every return equal: map them all to 0 rather than divide by zero
        report.low, report.high = float(lo), float(hi)
        report.truncated_unpaid = stats.truncated
    elif name == "success":
        report.low, report.high = 0.0, 1.0
    return report


def transform_rewards(episodes: list[Episode], spec: str, gamma: float, low: float | None,
                      high: float | None) -> list[Episode]:
    """Each episode's rewards under `spec` with the bounds of its `reward_report`, partial returns checked."""
    name, _ = parse_spec(spec)
    if name == "none":
        out = list(episodes)
    elif name == "scale":
        out = [ep.with_rewards([r / high for r in ep.rewards]) for ep in episodes]
    elif name == "episode_return":
        out = []
        for ep in episodes:
            sparse = [0.0] * len(ep.rewards)
            if ep.done:
                sparse[-1] = min(max((ep.total_return - low) / (high - low), 0.0), 1.0)
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
    for ep in out:
        check_partial_returns(ep, gamma, name)
    return out


def _scale_divisor(stats: RewardStats, gamma: float, r_max: float | None, source: str) -> float:
    """RMAX for `scale`: the given one if it bounds every discounted partial return, else the data's bound."""
    if stats.first_negative is not None:
        episode_id, turn, r = stats.first_negative
        raise RewardRangeError(f"reward {r:g} < 0 cannot be scaled into [0, 1]; use "
                               "--reward_transform episode_return", episode_id=episode_id,
                               field=f"agent turn {turn}.reward")
    if stats.max_partial_at is None:
        raise RewardRangeError("all rewards are 0: nothing to learn (scale needs a positive maximum)")
    if r_max is None:
        return stats.max_partial
    if stats.max_partial > r_max * (1 + TOLERANCE):
        episode_id, turn = stats.max_partial_at
        raise RewardRangeError(
            f"scale divides by {source} {r_max:g}, but the discounted return from agent turn {turn} is "
            f"{stats.max_partial:.10g} (gamma {gamma:g}), the largest in the data; use --reward_transform scale "
            f"without an argument (divides by that bound) or scale:{stats.max_partial:.10g} or more",
            episode_id=episode_id, field=f"agent turn {turn}.reward")
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
