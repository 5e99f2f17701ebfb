"""The Q* oracle MDP (DESIGN §1.6): a 1-D chain of 5 positions, actions L/R, reward 1 on reaching 4.

Shared by the core oracle test, the CLI training test and the critic (`qsft score`) test.
Observations are single word tokens ("p0".."p4"), so every state is one token prefix.
"""

from __future__ import annotations

import random

from qsft.data.episode import Episode, Turn

N_POSITIONS, GOAL, GAMMA, MAX_TURNS = 5, 4, 0.9, 6
ACTIONS = ("L", "R")


def step(position: int, action: str) -> tuple[int, float, bool]:
    nxt = min(position + 1, GOAL) if action == "R" else max(position - 1, 0)
    return nxt, float(nxt == GOAL), nxt == GOAL


def q_star(gamma: float = GAMMA) -> dict[tuple[int, str], float]:
    """Value iteration to convergence."""
    q = {(s, a): 0.0 for s in range(GOAL) for a in ACTIONS}
    for _ in range(200):
        for (s, a) in q:
            nxt, reward, done = step(s, a)
            q[(s, a)] = reward + (0.0 if done else gamma * max(q[(nxt, b)] for b in ACTIONS))
    return q


def random_episodes(n: int, seed: int = 0) -> list[Episode]:
    """Uniform random behavior from random starts; episodes hitting MAX_TURNS end truncated."""
    rng = random.Random(seed)
    episodes = []
    for i in range(n):
        position = rng.randrange(GOAL)
        turns = [Turn("env", f"p{position}")]
        done = False
        for _ in range(MAX_TURNS):
            action = rng.choice(ACTIONS)
            position, reward, done = step(position, action)
            turns.append(Turn("agent", action, reward))
            if done:
                break
            turns.append(Turn("env", f"p{position}"))
        episodes.append(Episode(f"chain-{i}", tuple(turns), done, {"success": done}))
    return episodes


def chain_transitions(copies: int = 1) -> list[Episode]:
    """Every (state, action) of the chain `copies` times, as one-turn episodes: terminal at the goal,
    else truncated after the next observation (which the Bellman target bootstraps from).

    Q-SFT's fixed point is q_hat = (data frequency of a in s / pi_beta(a|s)) * Q*. In sampled uniform
    data the per-state frequencies stray from 1/2 by a few percent while a neural behavior model fits
    the pooled frequency, so q_hat would be off by up to ~0.06; with each transition exactly once the
    frequencies are exact and a test measures the Q-learning alone.
    """
    episodes = []
    for copy in range(copies):
        for state in range(GOAL):
            for action in ACTIONS:
                nxt, reward, done = step(state, action)
                turns = (Turn("env", f"p{state}"), Turn("agent", action, reward))
                if not done:
                    turns += (Turn("env", f"p{nxt}"),)
                episodes.append(Episode(f"chain-{copy}-{state}{action}", turns, done, {"success": done}))
    return episodes
