"""Scripted TextWorld policies: walkthrough-following, random admissible, and half-competent.

* `optimal`            the next command of a shortest solution from the current state (the
                       walkthrough, re-planned after any deviation: qsft's solver for the nav
                       tasks, TextWorld's own `policy_commands` for the challenges);
* `random`             a uniformly random admissible command;
* `epsilon:P`, `mixture:P` as for every environment (good = optimal, poor = random);
* `half-competent[:P]` the default, after LMRL-Gym's Text-Nav data: per episode a random fraction
                       P (default 0.5) of the game's rooms is "known"; in those rooms the policy
                       acts optimally, elsewhere it picks a random admissible command. Every
                       room's optimal commands are in the data, but most episodes wander, so
                       behavior cloning learns a mix while an offline RL method can stitch the
                       competent pieces together.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from qsft.envs.base import TextEnv
from qsft.envs.policies import Policy, PolicyFamily, parse_probability
from qsft.envs.textworld.env import TextWorldEnv
from qsft.errors import EnvError


def _textworld(env: TextEnv) -> TextWorldEnv:
    if not isinstance(env, TextWorldEnv):
        raise EnvError(f"TextWorld policies need a TextWorldEnv, got {type(env).__name__}")
    return env


def _random_command(env: TextWorldEnv, rng: random.Random) -> str:
    commands = sorted(env.admissible_commands)
    return rng.choice(commands) if commands else "look"


class TextWorldOptimalPolicy(Policy):
    """Follow the (re-planned) walkthrough."""

    def act(self, env: TextEnv, rng: random.Random) -> str:
        game = _textworld(env)
        return game.optimal_command() or _random_command(game, rng)


class TextWorldRandomPolicy(Policy):
    """A uniformly random admissible command."""

    def act(self, env: TextEnv, rng: random.Random) -> str:
        return _random_command(_textworld(env), rng)


@dataclass
class HalfCompetentPolicy(Policy):
    """Optimal in a random `fraction` of the rooms (drawn per episode), random admissible elsewhere."""

    fraction: float = 0.5
    known_rooms: frozenset[str] = field(default_factory=frozenset, init=False)

    def begin_episode(self, env: TextEnv, rng: random.Random) -> None:
        rooms = _textworld(env).rooms
        self.known_rooms = frozenset(rng.sample(rooms, math.ceil(self.fraction * len(rooms))))

    def act(self, env: TextEnv, rng: random.Random) -> str:
        game = _textworld(env)
        if game.current_room in self.known_rooms:
            return game.optimal_command() or _random_command(game, rng)
        return _random_command(game, rng)

    @property
    def label(self) -> str:
        return "half-competent"


def _half_competent(arg: float | None) -> Policy:
    return HalfCompetentPolicy(parse_probability("half-competent", arg, default=0.5))


TEXTWORLD_POLICIES = PolicyFamily(
    optimal=TextWorldOptimalPolicy,
    random=TextWorldRandomPolicy,
    good=TextWorldOptimalPolicy,
    poor=TextWorldRandomPolicy,
    default_spec="half-competent",
    extra={"half-competent": _half_competent},
    extra_help={"half-competent": "half-competent[:P]"},
)
