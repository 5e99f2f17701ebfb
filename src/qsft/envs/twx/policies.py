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

from qsft.envs.gold_path import HalfCompetentPolicy, gold_path_family, random_command
from qsft.envs.twx.env import TwxEnv

__all__ = ["TWX_POLICIES", "HalfCompetentPolicy", "gold_command", "random_command"]


def gold_command(env: TwxEnv) -> str | None:
    """The first gold command not yet carried out, if the engine admits it now (else None)."""
    done = 0
    for command, understood in env.history:
        if understood and done < len(env.gold_actions) and command == env.gold_actions[done]:
            done += 1
    if done < len(env.gold_actions) and env.gold_actions[done] in env.admissible:
        return env.gold_actions[done]
    return None


TWX_POLICIES = gold_path_family(TwxEnv, gold_command)
