"""Offline datasets: roll scripted policies out in an environment and write episodes as JSONL.

Episode i of a dataset made with `seed` uses a start seed and a policy seed derived from
(seed, i) by numpy's SeedSequence, so any episode can be regenerated on its own and the same
arguments always give identical files. An episode is the first observation followed by
alternating agent / env turns. A real ending (goal, win, loss) ends with the last agent turn
(`done: true`). An episode cut short by the turn limit is *truncated*: it keeps the final observation
as its last turn and says `done: false`, because the turn count is not part of the observation —
treating the cut as a terminal state worth 0 would teach a Q-learner that ordinary states are worthless
(time-limit bootstrapping); `meta.truncated` says so too.

Environments that render images (`observation_image()`, e.g. MiniGrid) put one on every env turn;
`generate_dataset` writes them as PNG files in `<name>_images/` beside the JSONL (qsft.data.images).
"""

from __future__ import annotations

import os
import random
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from qsft.data.episode import Episode, Turn
from qsft.data.images import has_images, write_episode_images
from qsft.data.io import save_episodes, sidecar_path
from qsft.envs.base import TextEnv
from qsft.envs.policies import Policy, default_policy_spec, make_policy
from qsft.envs.registry import make
from qsft.errors import ConfigError
from qsft.io import atomic_write_json

# Returns within this of the optimal return count as optimal (they are sums of small integers).
OPTIMAL_TOLERANCE = 1e-9


def episode_seeds(seed: int, index: int) -> tuple[int, int]:
    """(start seed for env.reset, seed of the policy's random generator) of episode `index`."""
    start_seed, policy_seed = np.random.SeedSequence([seed, index]).generate_state(2)
    return int(start_seed), int(policy_seed)


def run_episode(env: TextEnv, policy: Policy, start_seed: int, policy_seed: int, episode_id: str,
                meta: dict[str, Any] | None = None) -> Episode:
    """Play one episode of `policy` from `env.reset(start_seed)` and record it."""
    rng = random.Random(policy_seed)
    observation = env.reset(start_seed)
    policy.begin_episode(env, rng)
    render = getattr(env, "observation_image", None)

    def observe(text: str) -> Turn:
        return Turn("env", text, image=render() if render is not None else None)

    turns = [observe(observation)]
    invalid_actions = 0
    while True:
        action = policy.act(env, rng)
        observation, reward, done, info = env.step(action)
        turns.append(Turn("agent", action, reward))
        invalid_actions += bool(info["invalid"])
        if done:
            if info.get("truncated") and not info["success"]:
                turns.append(observe(observation))  # the bootstrap state of a time-limit cut
            break
        turns.append(observe(observation))
    episode_meta = {
        "env": env.name,
        "success": bool(info["success"]),
        "return": float(sum(t.reward for t in turns if t.role == "agent")),
        "optimal_return": env.optimal_return(),
        "turns": sum(t.role == "agent" for t in turns),
        "invalid_actions": invalid_actions,
        "truncated": bool(info["truncated"]),
        "start_seed": start_seed,
        "behavior": policy.label,
        **(meta or {}),
    }
    return Episode(episode_id, tuple(turns), not episode_meta["truncated"], episode_meta)


def generate_episodes(env_name: str, policy_spec: str | None, n: int, seed: int,
                      env_kwargs: dict[str, Any] | None = None, progress: bool = True) -> list[Episode]:
    """`n` episodes of the scripted policy `policy_spec` (None: the env's default) in `env_name`."""
    if n < 1:
        raise ConfigError(f"the number of episodes must be at least 1, got {n}")
    if seed < 0:
        raise ConfigError(f"the seed must be >= 0, got {seed}")
    env = make(env_name, **(env_kwargs or {}))
    spec = policy_spec or default_policy_spec(env_name)
    policy = make_policy(env_name, spec)
    episodes = []
    try:
        for i in tqdm(range(n), desc=f"{env_name} [{spec}]", unit="ep", disable=not progress):
            start_seed, policy_seed = episode_seeds(seed, i)
            episodes.append(run_episode(env, policy, start_seed, policy_seed, f"{env_name}-{seed}-{i}",
                                        {"policy": spec}))
    finally:
        env.close()  # engines (Java, stockfish) stop here, not at interpreter exit
    return episodes


def summarize(episodes: Sequence[Episode], env: TextEnv | None = None) -> dict[str, Any]:
    """Return statistics of `episodes` and the normalised-score constants.

    Success and optimal returns come from each episode's meta (as written by `run_episode`);
    episodes without them are left out of those two numbers (None when no episode has them).
    `min_return` comes from `env` when given.
    """
    if not episodes:
        raise ConfigError("cannot summarize an empty list of episodes")
    returns = [ep.total_return for ep in episodes]
    successes = [bool(ep.meta["success"]) for ep in episodes if "success" in ep.meta]
    optimal = [(ep.total_return, float(ep.meta["optimal_return"])) for ep in episodes
               if ep.meta.get("optimal_return") is not None]
    agent_turns = [len(ep.agent_turns) for ep in episodes]
    invalid = sum(int(ep.meta.get("invalid_actions", 0)) for ep in episodes)
    mean_return = statistics.fmean(returns)
    return {
        "episodes": len(episodes),
        "return_mean": mean_return,
        "return_std": statistics.pstdev(returns),
        "return_min": min(returns),
        "return_max": max(returns),
        "success_rate": statistics.fmean(successes) if successes else None,
        "optimal_rate": (statistics.fmean(r >= o - OPTIMAL_TOLERANCE for r, o in optimal) if optimal else None),
        "truncated_rate": statistics.fmean(bool(ep.meta.get("truncated", False)) for ep in episodes),
        "agent_turns_mean": statistics.fmean(agent_turns),
        "agent_turns_total": sum(agent_turns),
        "invalid_action_rate": invalid / sum(agent_turns),
        "normalization": {
            "min_return": env.min_return if env is not None else None,
            "dataset_average": mean_return,
            "optimal_return": statistics.fmean(o for _, o in optimal) if optimal else None,
        },
    }


def stats_path(out_path: str | os.PathLike) -> Path:
    """Where the summary of a dataset file lives: `<out>.stats.json`."""
    return sidecar_path(out_path)


def env_config(env: TextEnv) -> dict[str, Any]:
    """What training and evaluation need to know about an environment, as plain JSON."""
    return {
        "name": env.name,
        "max_turns": env.max_turns,
        "reward_range": list(env.reward_range),
        "reward_transform": env.default_reward_transform,
        "gamma": env.default_gamma,
        "beta": env.default_beta,
        "history_turns": env.history_turns,
        "action_hint": env.action_hint,
    }


def generate_dataset(env_name: str, policy_spec: str | None, n: int, seed: int, out_path: str | os.PathLike,
                     env_kwargs: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Generate episodes, write them to `out_path` (JSONL) and the summary to `<out>.stats.json`.

    Both files are written atomically; returns the summary (as stored in the sidecar).
    """
    env = make(env_name, **(env_kwargs or {}))  # fails fast on an unknown name or bad kwargs
    spec = policy_spec or default_policy_spec(env_name)
    episodes = generate_episodes(env_name, spec, n, seed, env_kwargs, progress)
    if has_images(episodes):
        episodes = write_episode_images(episodes, out_path)
    save_episodes(out_path, episodes)
    stats = {
        "file": os.fspath(out_path),
        "env": env_name,
        "env_kwargs": dict(env_kwargs or {}),
        "policy": spec,
        "seed": seed,
        "env_config": env_config(env),
        **summarize(episodes, env),
    }
    env.close()  # read for its constants only; an engine that started is stopped
    atomic_write_json(stats_path(out_path), stats)
    return stats
