"""Environment registry: `make(name, **kwargs)` builds any registered text environment.

Every environment is a folder (`envs/<name>/`: `env.py`, `policies.py`, its data and helpers) plus one
`register(...)` line at the bottom of this file naming its class and its scripted behavior policies by import
path, so listing environments never imports one (no engine starts, no word list loads).

Built-in names: `maze`, `maze-po`, `wordle`, `chess-kq`, `chess-kr`, `chess-kqr`, `chess-krr`,
`chess-endgames` (a mix of the four), `minigrid-<task>` (image observations, see `minigrid.env.TASKS`,
e.g. `minigrid-empty-random-6x6`), `textworld-nav`, `textworld-nav-hard`, `textworld-simple`,
`textworld-coin` (Microsoft TextWorld games, see `textworld.games.TASKS`), `twx-cookingworld`, `twx-coin`,
`twx-twc` (TextWorldExpress games, see `twx.env.TASKS`), `sciworld-find-living-thing`,
`sciworld-lifespan-longest-lived` (ScienceWorld tasks, see `scienceworld.env.TASKS`); those five run
Java engines (`pip install 'qsft[engines]'`); `metaworld-pick-place`, `metaworld-push`, `metaworld-reach`
(a Sawyer arm in MuJoCo with text actions, see `metaworld.env.TASKS`; `pip install 'qsft[robotics]'`).
`gym:<id>` wraps a gymnasium environment with text observations and actions (`GymTextEnv`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qsft.envs.base import TextEnv
from qsft.errors import EnvError

EnvFactory = Callable[..., TextEnv]
GYM_PREFIX = "gym:"



@dataclass(frozen=True)
class EnvEntry:
    factory: EnvFactory
    policies: str | None = None  # "module:ATTRIBUTE" of its `PolicyFamily` (qsft.envs.policies)


_REGISTRY: dict[str, EnvEntry] = {}


def register(name: str, factory: EnvFactory | str, *, policies: str | None = None, overwrite: bool = False,
             **fixed: Any) -> None:
    """Make `make(name, **kwargs)` call `factory(**fixed, **kwargs)`.

    `factory` is a callable or a lazy "module:Class" path (imported on the first `make`); `policies` the
    "module:ATTRIBUTE" path of the environment's scripted behavior policies (`qsft data generate`)."""
    if not name or name.startswith(GYM_PREFIX):
        raise EnvError(f"cannot register {name!r}: names must be non-empty and not start with {GYM_PREFIX!r}")
    if name in _REGISTRY and not overwrite:
        raise EnvError(f"environment {name!r} is already registered; pass overwrite=True to replace it")
    build = factory if callable(factory) else _lazy(factory)
    _REGISTRY[name] = EnvEntry((lambda **kwargs: build(**fixed, **kwargs)) if fixed else build, policies)


def resolve(path: str) -> Any:
    """The object a "module:ATTRIBUTE" path names (imported now)."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _lazy(path: str) -> EnvFactory:
    def factory(**kwargs: Any) -> TextEnv:
        return resolve(path)(**kwargs)

    return factory


def policies_of(name: str) -> str | None:
    """The registered behavior-policy path of `name`, None when it has none (or is not registered)."""
    entry = _REGISTRY.get(name)
    return entry.policies if entry is not None else None


def list_envs() -> list[str]:
    return sorted(_REGISTRY)


def make(name: str, **kwargs: Any) -> TextEnv:
    """Build the environment registered as `name` (or `gym:<id>`), passing `kwargs` to its factory."""
    if name.startswith(GYM_PREFIX):
        from qsft.envs.gym_adapter import GymTextEnv

        return GymTextEnv(name[len(GYM_PREFIX):], **kwargs)
    entry = _REGISTRY.get(name)
    if entry is None:
        raise EnvError(f"unknown environment {name!r}; known: {', '.join(list_envs())} "
                       f"(or {GYM_PREFIX}<id> for a gymnasium environment with text observations)")
    try:
        return entry.factory(**kwargs)
    except TypeError as err:
        raise EnvError(f"environment {name!r}: bad arguments {sorted(kwargs)}: {err}") from None


# MiniGrid and TextWorld task names are kept in step with `minigrid.env.TASKS` / `textworld.games.TASKS`,
# the twx-*, sciworld-* and metaworld-* names with `twx.env.TASKS` / `scienceworld.env.TASKS` /
# `metaworld.env.TASKS` (importing those here would load gymnasium / textworld).
MINIGRID_TASKS = ("empty-5x5", "empty-random-5x5", "empty-6x6", "empty-random-6x6", "empty-8x8")
TEXTWORLD_TASKS = ("nav", "nav-hard", "simple", "coin")
METAWORLD_TASKS = ("pick-place", "push", "reach")

register("maze", "qsft.envs.maze.env:MazeEnv", policies="qsft.envs.maze.policies:MAZE_POLICIES",
         partially_observed=False)
register("maze-po", "qsft.envs.maze.env:MazeEnv", policies="qsft.envs.maze.policies:MAZE_POLICIES",
         partially_observed=True)
register("wordle", "qsft.envs.wordle.env:WordleEnv", policies="qsft.envs.wordle.policies:WORDLE_POLICIES")
for _endgame in ("kq", "kr", "kqr", "krr", "endgames"):
    register(f"chess-{_endgame}", "qsft.envs.chess.env:ChessEndgameEnv",
             policies="qsft.envs.chess.policies:CHESS_POLICIES", endgame=_endgame)
for _task in MINIGRID_TASKS:
    register(f"minigrid-{_task}", "qsft.envs.minigrid.env:MinigridEnv",
             policies="qsft.envs.minigrid.policies:MINIGRID_POLICIES", task=_task)
for _task in TEXTWORLD_TASKS:
    register(f"textworld-{_task}", "qsft.envs.textworld.env:TextWorldEnv",
             policies="qsft.envs.textworld.policies:TEXTWORLD_POLICIES", task=_task)
register("twx-cookingworld", "qsft.envs.twx.env:TwxEnv", policies="qsft.envs.twx.policies:TWX_POLICIES",
         game="cookingworld")
register("twx-coin", "qsft.envs.twx.env:TwxEnv", policies="qsft.envs.twx.policies:TWX_POLICIES", game="coin")
register("twx-twc", "qsft.envs.twx.env:TwxEnv", policies="qsft.envs.twx.policies:TWX_POLICIES", game="twc")
register("sciworld-find-living-thing", "qsft.envs.scienceworld.env:SciWorldEnv",
         policies="qsft.envs.scienceworld.policies:SCIWORLD_POLICIES", task="find-living-thing")
register("sciworld-lifespan-longest-lived", "qsft.envs.scienceworld.env:SciWorldEnv",
         policies="qsft.envs.scienceworld.policies:SCIWORLD_POLICIES", task="lifespan-longest-lived")
for _task in METAWORLD_TASKS:
    register(f"metaworld-{_task}", "qsft.envs.metaworld.env:MetaWorldEnv",
             policies="qsft.envs.metaworld.policies:METAWORLD_POLICIES", task=_task)
