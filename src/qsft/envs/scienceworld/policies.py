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

from qsft.envs.gold_path import HalfCompetentPolicy, gold_path_family, random_command
from qsft.envs.scienceworld.env import SciWorldEnv

__all__ = ["SCIWORLD_POLICIES", "HalfCompetentPolicy", "gold_command", "random_command"]


def gold_command(env: SciWorldEnv) -> str | None:
    """The first gold command not yet carried out (None: the path is done, or the engine just refused it)."""
    done = 0
    for command, understood in env.history:
        if understood and done < len(env.gold_actions) and command == env.gold_actions[done]:
            done += 1
    if done == len(env.gold_actions) or env.history[-1:] == [(env.gold_actions[done], False)]:
        return None
    return env.gold_actions[done]


SCIWORLD_POLICIES = gold_path_family(SciWorldEnv, gold_command)
