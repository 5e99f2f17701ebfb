"""Scripted behavior shared by environments that list admissible commands and know a gold path (twx-*, sciworld-*,
metaworld-*).

An env using it has `admissible` (commands the engine accepts next), `current_room` and `task.half_competent`;
its own `gold_command(env)` says which gold command comes next (None: none now). An env without rooms passes
`gold_path_family` its own `region(env)` instead (metaworld-*: the task phase). `gold_path_family` builds:
* `optimal`            the gold path, resumed after deviations, else a random admissible command;
* `random`             a uniformly random admissible command;
* `epsilon:P`, `mixture:P` as for every environment (good = optimal, poor = random);
* `half-competent[:P]` the default, after LMRL-Gym's Text-Nav data: each room the agent enters is "known" with
                       probability P (default: the task's `half_competent`, drawn once per room and episode);
                       the gold path in known rooms, random admissible commands elsewhere.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from qsft.envs.base import TextEnv
from qsft.envs.policies import Policy, PolicyFamily, parse_probability
from qsft.errors import EnvError

GoldCommand = Callable[[TextEnv], "str | None"]
Region = Callable[[TextEnv], "str | None"]  # the part of the task the agent is in: half-competent's unit


def current_room(env) -> str | None:
    return env.current_room


def random_command(env, rng: random.Random) -> str:
    return rng.choice(env.admissible) if env.admissible else "look around"


def _checked(env: TextEnv, env_type: type) -> TextEnv:
    if not isinstance(env, env_type):
        raise EnvError(f"these policies need a {env_type.__name__}, got {type(env).__name__}")
    return env


@dataclass
class GoldPathPolicy(Policy):
    """Replay the gold path (resuming it after deviations)."""

    env_type: type
    gold: GoldCommand

    def act(self, env: TextEnv, rng: random.Random) -> str:
        game = _checked(env, self.env_type)
        return self.gold(game) or random_command(game, rng)

    @property
    def label(self) -> str:
        return "optimal"


@dataclass
class RandomCommandPolicy(Policy):
    """A uniformly random admissible command."""

    env_type: type

    def act(self, env: TextEnv, rng: random.Random) -> str:
        return random_command(_checked(env, self.env_type), rng)

    @property
    def label(self) -> str:
        return "random"


@dataclass
class HalfCompetentPolicy(Policy):
    """Gold path in the rooms it knows (each entered room known with probability `fraction`), random elsewhere.

    `fraction=None`: the task's `half_competent` default; `region`: what a "room" is."""

    env_type: type
    gold: GoldCommand
    fraction: float | None = None
    region: Region = current_room
    known_rooms: dict[str, bool] = field(default_factory=dict, init=False)
    probability: float = field(default=0.5, init=False)  # this episode's fraction

    def begin_episode(self, env: TextEnv, rng: random.Random) -> None:
        self.known_rooms = {}
        game = _checked(env, self.env_type)
        self.probability = game.task.half_competent if self.fraction is None else self.fraction

    def act(self, env: TextEnv, rng: random.Random) -> str:
        game = _checked(env, self.env_type)
        room = self.region(game) or ""
        if room not in self.known_rooms:
            self.known_rooms[room] = rng.random() < self.probability
        if self.known_rooms[room]:
            return self.gold(game) or random_command(game, rng)
        return random_command(game, rng)

    @property
    def label(self) -> str:
        return "half-competent"


def gold_path_family(env_type: type, gold: GoldCommand, region: Region = current_room) -> PolicyFamily:
    """The policy family above for environments of `env_type` whose next gold command `gold` gives."""

    def half_competent(arg: float | None) -> Policy:
        fraction = None if arg is None else parse_probability("half-competent", arg)
        return HalfCompetentPolicy(env_type, gold, fraction, region)

    optimal, uniform = partial(GoldPathPolicy, env_type, gold), partial(RandomCommandPolicy, env_type)
    return PolicyFamily(optimal=optimal, random=uniform, good=optimal, poor=uniform, default_spec="half-competent",
                        extra={"half-competent": half_competent}, extra_help={"half-competent": "half-competent[:P]"})
