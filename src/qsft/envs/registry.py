"""Environment registry: `make(name, **kwargs)` builds any registered text environment.

Built-in names: `maze`, `maze-po`, `wordle`, `chess-kq`, `chess-kr`, `chess-kqr`, `chess-krr`,
`chess-endgames` (a mix of the four), `minigrid-<task>` (image observations, see minigrid_env.TASKS,
e.g. `minigrid-empty-random-6x6`), `textworld-nav`, `textworld-nav-hard`, `textworld-simple`,
`textworld-coin` (Microsoft TextWorld games, see textworld_games.TASKS). `gym:<id>` wraps a
gymnasium environment with text observations and actions (`GymTextEnv`). Factories import their module only when called, so
listing environments never starts an engine or loads a word list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qsft.envs.base import TextEnv
from qsft.errors import EnvError

EnvFactory = Callable[..., TextEnv]
GYM_PREFIX = "gym:"

_REGISTRY: dict[str, EnvFactory] = {}


def register(name: str, factory: EnvFactory, *, overwrite: bool = False) -> None:
    """Make `make(name, **kwargs)` call `factory(**kwargs)`."""
    if not name or name.startswith(GYM_PREFIX):
        raise EnvError(f"cannot register {name!r}: names must be non-empty and not start with {GYM_PREFIX!r}")
    if name in _REGISTRY and not overwrite:
        raise EnvError(f"environment {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = factory


def list_envs() -> list[str]:
    return sorted(_REGISTRY)


def make(name: str, **kwargs: Any) -> TextEnv:
    """Build the environment registered as `name` (or `gym:<id>`), passing `kwargs` to its factory."""
    if name.startswith(GYM_PREFIX):
        from qsft.envs.gym_adapter import GymTextEnv

        return GymTextEnv(name[len(GYM_PREFIX):], **kwargs)
    factory = _REGISTRY.get(name)
    if factory is None:
        raise EnvError(f"unknown environment {name!r}; known: {', '.join(list_envs())} "
                       f"(or {GYM_PREFIX}<id> for a gymnasium environment with text observations)")
    try:
        return factory(**kwargs)
    except TypeError as err:
        raise EnvError(f"environment {name!r}: bad arguments {sorted(kwargs)}: {err}") from None


def _maze(**kwargs: Any) -> TextEnv:
    from qsft.envs.maze import MazeEnv

    return MazeEnv(partially_observed=False, **kwargs)


def _maze_po(**kwargs: Any) -> TextEnv:
    from qsft.envs.maze import MazeEnv

    return MazeEnv(partially_observed=True, **kwargs)


def _wordle(**kwargs: Any) -> TextEnv:
    from qsft.envs.wordle import WordleEnv

    return WordleEnv(**kwargs)


def _chess(endgame: str) -> EnvFactory:
    def factory(**kwargs: Any) -> TextEnv:
        from qsft.envs.chess_endgames import ChessEndgameEnv

        return ChessEndgameEnv(endgame=endgame, **kwargs)

    return factory


def _minigrid(task: str) -> EnvFactory:
    def factory(**kwargs: Any) -> TextEnv:
        from qsft.envs.minigrid_env import MinigridEnv

        return MinigridEnv(task=task, **kwargs)

    return factory


# MiniGrid tasks; kept in step with qsft.envs.minigrid_env.TASKS (importing it here would load gymnasium)
MINIGRID_TASKS = ("empty-5x5", "empty-random-5x5", "empty-6x6", "empty-random-6x6", "empty-8x8")

register("maze", _maze)
register("maze-po", _maze_po)
register("wordle", _wordle)
for _endgame in ("kq", "kr", "kqr", "krr", "endgames"):
    register(f"chess-{_endgame}", _chess(_endgame))
for _task in MINIGRID_TASKS:
    register(f"minigrid-{_task}", _minigrid(_task))


def _textworld(task: str) -> EnvFactory:
    def factory(**kwargs: Any) -> TextEnv:
        from qsft.envs.textworld_env import TextWorldEnv

        return TextWorldEnv(task=task, **kwargs)

    return factory


# TextWorld tasks; kept in step with qsft.envs.textworld_games.TASKS (importing it here would load textworld)
TEXTWORLD_TASKS = ("nav", "nav-hard", "simple", "coin")
for _task in TEXTWORLD_TASKS:
    register(f"textworld-{_task}", _textworld(_task))
