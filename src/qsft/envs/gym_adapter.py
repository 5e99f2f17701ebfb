"""Adapter: any gymnasium environment whose observations and actions are text, as a `TextEnv`.

    env = GymTextEnv("MyTextGame-v0")          # gymnasium.make(...) (gymnasium must be installed)
    env = GymTextEnv(my_env_object)            # or an already built env (duck-typed)

The wrapped env follows gymnasium's API: `reset(seed=...) -> (obs, info)` and
`step(action) -> (obs, reward, terminated, truncated, info)`. Observations get a trailing
newline when they lack one (the qsft transcript convention). An episode counts as a success when
the env says so in `info["success"]`, else when it terminated with a positive last reward.
"""

from __future__ import annotations

from typing import Any

from qsft.envs.base import StepResult, TextEnv
from qsft.errors import EnvError


def _as_text(observation: Any, where: str) -> str:
    if not isinstance(observation, str):
        raise EnvError(f"{where}: GymTextEnv needs text observations, got {type(observation).__name__}")
    return observation if observation.endswith("\n") else observation + "\n"


class GymTextEnv(TextEnv):
    """Wrap a gymnasium-style env with `str` observations and actions."""

    def __init__(self, env: Any, *, name: str | None = None, max_turns: int = 100,
                 reward_range: tuple[float, float] | None = None, min_return: float | None = None,
                 optimal_return: float | None = None, reward_transform: str = "episode_return",
                 gamma: float = 0.99, beta: float = 1.0, history_turns: int | None = None,
                 action_hint: str = "", **make_kwargs: Any) -> None:
        super().__init__()
        if isinstance(env, str):
            env_id, env = env, self._gym_make(env, make_kwargs)
        else:
            if make_kwargs:
                raise EnvError(f"GymTextEnv: extra arguments {sorted(make_kwargs)} only apply to an env id")
            env_id = type(env).__name__
        for method in ("reset", "step"):
            if not callable(getattr(env, method, None)):
                raise EnvError(f"GymTextEnv: {env_id} has no {method}() method; is it a gymnasium env?")
        self.env = env
        self.name = name or f"gym:{env_id}"
        self.max_turns = max_turns
        self.reward_range = reward_range or tuple(getattr(env, "reward_range", (float("-inf"), float("inf"))))
        self.min_return = min_return
        self._optimal_return = optimal_return
        self.default_reward_transform = reward_transform
        self.default_gamma = gamma
        self.default_beta = beta
        self.history_turns = history_turns
        self.action_hint = action_hint

    @staticmethod
    def _gym_make(env_id: str, kwargs: dict[str, Any]) -> Any:
        try:
            import gymnasium
        except ImportError:
            raise EnvError(f"environment 'gym:{env_id}' needs gymnasium, which is not installed; "
                           "run: pip install gymnasium") from None
        try:
            return gymnasium.make(env_id, **kwargs)
        except Exception as err:  # gymnasium raises several error types for unknown / broken ids
            raise EnvError(f"gymnasium could not make {env_id!r}: {err}") from None

    def optimal_return(self, seed: int | None = None) -> float | None:
        return self._optimal_return

    def _reset(self, seed: int | None) -> str:
        result = self.env.reset(seed=seed)
        observation = result[0] if isinstance(result, tuple) else result
        return _as_text(observation, f"{self.name} reset")

    def _step(self, action: str) -> StepResult:
        observation, reward, terminated, truncated, info = self.env.step(action)
        done = bool(terminated or truncated)
        out = {"invalid": bool(info.get("invalid", False)), "env_info": dict(info)}
        if done:
            out["truncated"] = bool(truncated and not terminated)
            out["success"] = bool(info.get("success", terminated and reward > 0))
        return _as_text(observation, f"{self.name} step"), float(reward), done, out

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if callable(close):
            close()
