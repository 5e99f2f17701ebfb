"""Scripted TextWorldExpress policies: the engine's gold path, random admissible, and half-competent.

* `optimal`            the engine's gold path of the game (cleaned as `TwxEnv._play_gold_path` says),
                       replayed from the reset. The engine plans only when a game starts, so after a
                       deviation (an `epsilon` noise command, a half-competent detour) the policy
                       resumes the gold path at its first command not yet carried out when the engine
                       admits it, and otherwise plays a random admissible command;
* `random`             a uniformly random admissible command;
* `epsilon:P`, `mixture:P` as for every environment (good = optimal, poor = random);
* `half-competent[:P]` the default, after LMRL-Gym's Text-Nav data (as textworld-*): each room the
                       agent enters is "known" with probability P (default 0.5, drawn once per room
                       and episode); in known rooms the policy follows the gold path, elsewhere it picks
                       a random admissible command. Gold commands of every room are in the data, but
                       most episodes wander (success rates in `twx.env.TASKS`' comments).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from qsft.envs.base import TextEnv
from qsft.envs.policies import Policy, PolicyFamily, parse_probability
from qsft.envs.twx.env import TwxEnv
from qsft.errors import EnvError


def _twx(env: TextEnv) -> TwxEnv:
    if not isinstance(env, TwxEnv):
        raise EnvError(f"TextWorldExpress policies need a TwxEnv, got {type(env).__name__}")
    return env


def random_command(env: TwxEnv, rng: random.Random) -> str:
    return rng.choice(env.admissible) if env.admissible else "look around"


def gold_command(env: TwxEnv) -> str | None:
    """The first gold command not yet carried out, if the engine admits it now (else None)."""
    done = 0
    for command, understood in env.history:
        if understood and done < len(env.gold_actions) and command == env.gold_actions[done]:
            done += 1
    if done < len(env.gold_actions) and env.gold_actions[done] in env.admissible:
        return env.gold_actions[done]
    return None


class TwxOptimalPolicy(Policy):
    """Replay the gold path (resuming it after deviations)."""

    def act(self, env: TextEnv, rng: random.Random) -> str:
        game = _twx(env)
        return gold_command(game) or random_command(game, rng)


class TwxRandomPolicy(Policy):
    """A uniformly random admissible command."""

    def act(self, env: TextEnv, rng: random.Random) -> str:
        return random_command(_twx(env), rng)


@dataclass
class HalfCompetentPolicy(Policy):
    """Gold path in the rooms it knows (each entered room known with probability `fraction`), random elsewhere.

    `fraction=None`: the task's `half_competent` default."""

    fraction: float | None = None
    known_rooms: dict[str, bool] = field(default_factory=dict, init=False)
    probability: float = field(default=0.5, init=False)  # this episode's fraction

    def begin_episode(self, env: TextEnv, rng: random.Random) -> None:
        self.known_rooms = {}
        self.probability = _twx(env).task.half_competent if self.fraction is None else self.fraction

    def act(self, env: TextEnv, rng: random.Random) -> str:
        game = _twx(env)
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


TWX_POLICIES = PolicyFamily(
    optimal=TwxOptimalPolicy,
    random=TwxRandomPolicy,
    good=TwxOptimalPolicy,
    poor=TwxRandomPolicy,
    default_spec="half-competent",
    extra={"half-competent": _half_competent},
    extra_help={"half-competent": "half-competent[:P]"},
)
