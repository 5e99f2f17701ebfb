"""Scripted MiniGrid policies: BFS-optimal, uniformly random, and their mixtures (qsft.envs.policies).

The default behavior data is `epsilon:0.5`: each step the shortest-path action (ties at random) with
probability 0.5, else a uniformly random action. Episodes then range from optimal paths to long
detours, most of them still reaching the goal within the turn limit: behavior cloning learns the
noisy policy, while a Q-learner can pick the shortest-path action out of the same data.
"""

from __future__ import annotations

import random

from qsft.envs.base import TextEnv
from qsft.envs.minigrid.env import ACTIONS, MinigridEnv
from qsft.envs.policies import Policy, PolicyFamily
from qsft.errors import EnvError


def _minigrid(env: TextEnv) -> MinigridEnv:
    if not isinstance(env, MinigridEnv):
        raise EnvError(f"MiniGrid policies need a MinigridEnv, got {type(env).__name__}")
    return env


class MinigridOptimalPolicy(Policy):
    """An action on a shortest path to the goal (BFS over position and heading), ties broken at random."""

    def act(self, env: TextEnv, rng: random.Random) -> str:
        return rng.choice(_minigrid(env).optimal_actions())


class MinigridRandomPolicy(Policy):
    """One of the three actions, uniformly."""

    def act(self, env: TextEnv, rng: random.Random) -> str:
        _minigrid(env)
        return rng.choice(ACTIONS)


MINIGRID_POLICIES = PolicyFamily(
    optimal=MinigridOptimalPolicy,
    random=MinigridRandomPolicy,
    good=MinigridOptimalPolicy,
    poor=MinigridRandomPolicy,
    default_spec="epsilon:0.5",
)
