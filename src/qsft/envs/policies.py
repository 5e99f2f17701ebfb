"""Scripted behavior policies that produce offline datasets, chosen by a spec string.

A policy acts on a live environment and may read its true state (the maze position, the chess
board); it never sees a model. Specs, for every built-in environment:

* `optimal`        the environment's reference solver (maze BFS, Wordle max-entropy solver,
                   Stockfish at high depth);
* `random`         a uniformly random action (maze move, vocabulary word, legal chess move);
* `epsilon:P`      per turn, the random action with probability P, else the good policy;
* `mixture:P`      per EPISODE, the good policy with probability P, else a poor one: behavior
                   cloning then averages good and bad play, while every good trajectory is still
                   in the data for an offline RL method to pick out;

plus environment-specific ones (see `policy_specs(env_name)`):

* maze:   `lmrl[:P]`        LMRL-Gym-style region-confined data (the default, see maze/policies.py);
* wordle: `consistent:P`    per guess, a random answer consistent with the feedback so far with
                            probability P, else a random vocabulary word;
* chess:  `stockfish:D`     Stockfish best move at depth D.

For `epsilon` and `mixture` the good policy is `optimal`, except for chess where it is Stockfish
at the behavior depth (see chess/policies.py), which keeps dataset generation fast.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from qsft.envs.base import TextEnv
from qsft.errors import ConfigError, EnvError


class Policy(ABC):
    """Chooses the next agent utterance for a live environment."""

    def begin_episode(self, env: TextEnv, rng: random.Random) -> None:  # noqa: B027 - optional hook
        """Called right after `env.reset`; per-episode choices (mixture component, region) go here."""

    @abstractmethod
    def act(self, env: TextEnv, rng: random.Random) -> str: ...

    @property
    def label(self) -> str:
        """Which policy actually acted this episode (mixtures report their component)."""
        return type(self).__name__


@dataclass
class EpsilonPolicy(Policy):
    """Per turn: `noise` with probability `epsilon`, else `good`."""

    good: Policy
    noise: Policy
    epsilon: float

    def begin_episode(self, env: TextEnv, rng: random.Random) -> None:
        self.good.begin_episode(env, rng)
        self.noise.begin_episode(env, rng)

    def act(self, env: TextEnv, rng: random.Random) -> str:
        return (self.noise if rng.random() < self.epsilon else self.good).act(env, rng)


@dataclass
class MixturePolicy(Policy):
    """Per episode: `good` with probability `p_good`, else `poor`."""

    good: Policy
    poor: Policy
    p_good: float
    current: Policy | None = field(default=None, init=False)

    def begin_episode(self, env: TextEnv, rng: random.Random) -> None:
        self.current = self.good if rng.random() < self.p_good else self.poor
        self.current.begin_episode(env, rng)

    def act(self, env: TextEnv, rng: random.Random) -> str:
        if self.current is None:
            raise EnvError("MixturePolicy.act called before begin_episode")
        return self.current.act(env, rng)

    @property
    def label(self) -> str:
        return "good" if self.current is self.good else "poor"


# An env-specific spec maker receives the spec's numeric argument (None when absent).
SpecFactory = Callable[[float | None], Policy]


@dataclass(frozen=True)
class PolicyFamily:
    """The scripted policies of one kind of environment."""

    optimal: Callable[[], Policy]
    random: Callable[[], Policy]
    good: Callable[[], Policy]  # the good side of epsilon / mixture
    poor: Callable[[], Policy]  # the bad side of mixture
    default_spec: str
    extra: dict[str, SpecFactory] = field(default_factory=dict)
    extra_help: dict[str, str] = field(default_factory=dict)


def _family(env_name: str) -> PolicyFamily:
    from qsft.envs.registry import list_envs, policies_of, resolve

    path = policies_of(env_name)
    if path is None:
        known = [name for name in list_envs() if policies_of(name) is not None]
        raise EnvError(f"no scripted behavior policies for environment {env_name!r}; they exist for "
                       f"{', '.join(known)}")
    return resolve(path)


def parse_probability(spec: str, value: float | None, *, default: float | None = None) -> float:
    if value is None:
        if default is None:
            raise ConfigError(f"policy spec {spec!r} needs a probability, e.g. {spec.split(':')[0]}:0.3")
        return default
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"policy spec {spec!r}: the probability must be in [0, 1], got {value:g}")
    return value


def make_policy(env_name: str, spec: str | None = None) -> Policy:
    """Build the behavior policy `spec` (None: the environment's default) for `env_name`."""
    family = _family(env_name)
    spec = spec or family.default_spec
    name, _, arg_text = spec.partition(":")
    try:
        arg = float(arg_text) if arg_text else None
    except ValueError:
        raise ConfigError(f"policy spec {spec!r}: {arg_text!r} is not a number") from None
    if name in ("optimal", "random") and arg is not None:
        raise ConfigError(f"policy spec {spec!r}: {name!r} takes no argument")
    if name == "optimal":
        return family.optimal()
    if name == "random":
        return family.random()
    if name == "epsilon":
        return EpsilonPolicy(family.good(), family.random(), parse_probability(spec, arg))
    if name == "mixture":
        return MixturePolicy(family.good(), family.poor(), parse_probability(spec, arg))
    if name in family.extra:
        return family.extra[name](arg)
    raise ConfigError(f"unknown policy spec {spec!r} for {env_name!r}; use one of: "
                      f"{', '.join(policy_specs(env_name))}")


def default_policy_spec(env_name: str) -> str:
    return _family(env_name).default_spec


def policy_specs(env_name: str) -> list[str]:
    """Spec patterns accepted for `env_name`, e.g. ['optimal', 'random', 'epsilon:P', ...]."""
    family = _family(env_name)
    return ["optimal", "random", "epsilon:P", "mixture:P", *family.extra_help.values()]
