"""Text environments, scripted behavior policies and offline dataset generation.

    from qsft.envs import make, make_policy, generate_dataset
    env = make("maze")
    observation = env.reset(seed=0)
    observation, reward, done, info = env.step("move right")

This package knows nothing of models: it imports neither torch nor transformers.
"""

from qsft.envs.base import Normalization, StepResult, TextEnv
from qsft.envs.generate import generate_dataset, generate_episodes, run_episode, stats_path, summarize
from qsft.envs.gym_adapter import GymTextEnv
from qsft.envs.policies import Policy, default_policy_spec, make_policy, policy_specs
from qsft.envs.registry import list_envs, make, register

__all__ = [
    "GymTextEnv", "Normalization", "Policy", "StepResult", "TextEnv", "default_policy_spec",
    "generate_dataset", "generate_episodes", "list_envs", "make", "make_policy", "policy_specs",
    "register", "run_episode", "stats_path", "summarize",
]
