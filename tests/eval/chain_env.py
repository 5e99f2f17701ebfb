"""The Q* oracle chain (tests/oracle_chain.py) as a `TextEnv`, for decoding and rollout tests."""

from __future__ import annotations

import random

from qsft.envs.base import StepResult, TextEnv
from tests.oracle_chain import ACTIONS, GOAL, MAX_TURNS, step


class ChainEnv(TextEnv):
    """Positions p0..p4, actions "L"/"R", reward 1 on reaching p4; anything else is invalid."""

    name = "chain"
    max_turns = MAX_TURNS
    reward_range = (0.0, 1.0)
    min_return = 0.0
    default_beta = 1.0
    history_turns = 1
    closed = 0

    def __init__(self) -> None:
        super().__init__()
        self.position = 0

    def _reset(self, seed: int | None) -> str:
        self.position = random.Random(seed).randrange(GOAL)
        return f"p{self.position}"

    def _step(self, action: str) -> StepResult:
        if action not in ACTIONS:
            return f"p{self.position}", 0.0, False, {"invalid": True}
        self.position, reward, done = step(self.position, action)
        info = {"invalid": False, **({"success": True} if done else {})}
        return f"p{self.position}", reward, done, info

    def optimal_return(self, seed: int | None = None) -> float:
        return 1.0

    def close(self) -> None:
        ChainEnv.closed += 1
