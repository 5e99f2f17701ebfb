"""Scripted ScienceWorld policies: the engine's gold path, random admissible, and half-competent.

* `optimal`            the engine's gold path of the variation, replayed from the reset. The engine
                       plans only when a variation is loaded, so after a deviation (an `epsilon` noise
                       command, a half-competent detour) the policy resumes the gold path at its first
                       command not yet carried out; when the engine has just refused that command, a
                       random admissible command comes first. (Gold commands name objects their own way,
                       "focus on dove", so they are not checked against the admissible list.)
* `random`             a uniformly random admissible command (most random episodes end by focusing
                       on the wrong thing);
* `epsilon:P`, `mixture:P` as for every environment (good = optimal, poor = random);
* `half-competent[:P]` the default, after LMRL-Gym's Text-Nav data (as textworld-*): each room the
                       agent enters is "known" with probability P (default 0.5, drawn once per room
                       and episode); in known rooms the policy follows the gold path, elsewhere it picks
                       a random admissible command (success rates in `scienceworld.env.TASKS`' comments).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from qsft.envs.base import TextEnv
from qsft.envs.policies import Policy, PolicyFamily, parse_probability
from qsft.envs.scienceworld.env import SciWorldEnv
from qsft.errors import EnvError


def _sciworld(env: TextEnv) -> SciWorldEnv:
    if not isinstance(env, SciWorldEnv):
        raise EnvError(f"ScienceWorld policies need a SciWorldEnv, got {type(env).__name__}")
    return env


def random_command(env: SciWorldEnv, rng: random.Random) -> str:
    return rng.choice(env.admissible) if env.admissible else "look around"


def gold_command(env: SciWorldEnv) -> str | None:
    """The first gold command not yet carried out (None: the path is done, or the engine just refused it)."""
    done = 0
    for command, understood in env.history:
        if understood and done < len(env.gold_actions) and command == env.gold_actions[done]:
            done += 1
    if done == len(env.gold_actions) or env.history[-1:] == [(env.gold_actions[done], False)]:
        return None
    return env.gold_actions[done]


class SciWorldOptimalPolicy(Policy):
    """Replay the gold path (resuming it after deviations)."""

    def act(self, env: TextEnv, rng: random.Random) -> str:
        game = _sciworld(env)
        return gold_command(game) or random_command(game, rng)


class SciWorldRandomPolicy(Policy):
    """A uniformly random admissible command."""

    def act(self, env: TextEnv, rng: random.Random) -> str:
        return random_command(_sciworld(env), rng)


@dataclass
class HalfCompetentPolicy(Policy):
    """Gold path in the rooms it knows (each entered room known with probability `fraction`), random elsewhere.

    `fraction=None`: the task's `half_competent` default."""

    fraction: float | None = None
    known_rooms: dict[str, bool] = field(default_factory=dict, init=False)
    probability: float = field(default=0.5, init=False)  # this episode's fraction

    def begin_episode(self, env: TextEnv, rng: random.Random) -> None:
        self.known_rooms = {}
        self.probability = _sciworld(env).task.half_competent if self.fraction is None else self.fraction

    def act(self, env: TextEnv, rng: random.Random) -> str:
        game = _sciworld(env)
        room = game.current_room or ""
        if room not in self.known_rooms:
            self.known_rooms[room] = rng.random() < self.probability
        if self.known_rooms[room]:
            return gold_command(game) or random_command(game, rng)
        return random_command(game, rng)

    @property
    def label(self) -> str:
        return "half-competent"


def _half_competent(arg: float | None) -> Policy:
    return HalfCompetentPolicy(None if arg is None else parse_probability("half-competent", arg))


SCIWORLD_POLICIES = PolicyFamily(
    optimal=SciWorldOptimalPolicy,
    random=SciWorldRandomPolicy,
    good=SciWorldOptimalPolicy,
    poor=SciWorldRandomPolicy,
    default_spec="half-competent",
    extra={"half-competent": _half_competent},
    extra_help={"half-competent": "half-competent[:P]"},
)
