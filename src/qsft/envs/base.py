"""The text-environment protocol every qsft environment speaks.

An environment talks in text: `reset(seed)` returns the first observation, `step(action)` takes
an agent utterance and returns `(observation, reward, done, info)`. Observations end with "\\n"
and agent utterances contain no newline, so an episode's transcript is simply
observation, action, observation, action, ... (the tokenizer adds its own end-of-turn token).

`info` always carries `invalid` (the action could not be parsed or was illegal) and, once the
episode is over, `success` and `truncated` (the turn limit `max_turns` ended it).

Besides the dynamics, an environment declares what the rest of qsft needs to train and score on
it without knowing the game: the reward transform into [0, 1] (DESIGN §1.3), the discount and
extraction `beta` of the paper, how many past turns a policy needs as context, and the
constants of the LMRL-Gym normalised score (0 = `min_return`, 50 = dataset average,
100 = `optimal_return`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from qsft.errors import EnvError

StepResult = tuple[str, float, bool, dict[str, Any]]


@dataclass(frozen=True)
class Normalization:
    """Constants of the LMRL-Gym normalised score for one dataset / evaluation set."""

    min_return: float
    dataset_average: float
    optimal_return: float

    def score(self, mean_return: float) -> float:
        """0 at `min_return`, 50 at `dataset_average`, 100 at `optimal_return` (piecewise linear)."""
        if mean_return < self.dataset_average:
            span = self.dataset_average - self.min_return
            return 50.0 * (mean_return - self.min_return) / span if span > 0 else 0.0
        span = self.optimal_return - self.dataset_average
        return 50.0 + 50.0 * (mean_return - self.dataset_average) / span if span > 0 else 100.0


class TextEnv(ABC):
    """Base class: subclasses implement `_reset` and `_step`; the turn limit is enforced here."""

    name: str = "text-env"
    max_turns: int = 100
    # Per-step reward bounds (what a single `step` can pay).
    reward_range: tuple[float, float] = (float("-inf"), float("inf"))
    # Lowest return the normalised score counts as 0 (see each env for what it means there).
    min_return: float | None = None
    default_reward_transform: str = "episode_return"
    default_gamma: float = 0.99
    default_beta: float = 1.0
    # Previous turns (env and agent texts) a policy needs as context; None = the whole history.
    history_turns: int | None = None
    action_hint: str = ""

    def __init__(self) -> None:
        self.turns_taken = 0
        self.done = True
        self.start_seed: int | None = None

    def reset(self, seed: int | None = None) -> str:
        """Start a new episode (deterministic for a given seed); returns the first observation."""
        self.turns_taken = 0
        self.done = False
        self.start_seed = seed
        return self._reset(seed)

    def step(self, action: str) -> StepResult:
        """Apply one agent utterance; returns (observation, reward, done, info)."""
        if self.done:
            raise EnvError(f"{self.name}: the episode is over (or was never started); call reset() first")
        self.turns_taken += 1
        observation, reward, done, info = self._step(action)
        info.setdefault("invalid", False)
        if done:
            info.setdefault("truncated", False)
        elif self.turns_taken >= self.max_turns:
            done = True
            info["truncated"] = True
        if done:
            info.setdefault("success", False)
        self.done = done
        return observation, float(reward), done, info

    def optimal_return(self, seed: int | None = None) -> float | None:
        """Best achievable return from the start `reset(seed)` gives (None: unknown).

        Without a seed: from the start of the current episode. Never disturbs the current episode.
        """
        return None

    @abstractmethod
    def _reset(self, seed: int | None) -> str: ...

    @abstractmethod
    def _step(self, action: str) -> StepResult: ...

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for envs that hold nothing
        """Release external resources (engines, processes); the env may not be used afterwards."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, max_turns={self.max_turns})"
