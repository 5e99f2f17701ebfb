"""Microsoft TextWorld games as qsft text environments (`textworld-nav`, `-nav-hard`, `-simple`, `-coin`).

Each environment plays a small pool of compiled games (see `textworld/games.py`: what the tasks
are, how games are generated and cached). `reset(seed)` plays game `seed % pool_size` of the
pool, whose games come from generation seeds `game_seed .. game_seed + pool_size - 1`; games are
built on first use, so `make()` is cheap.

Observations (`observation=`):

* `compact` (the default; fully observed, so `history_turns = 1`): four short lines rendered from
  the game's facts, for tiny models:

      Goal: Put the milk from the counter in the office into the crate in the bedroom.
      You take the milk from the counter.
      Office. Exits: east, west. Here: counter.
      Carrying: milk.

  (line 2 is the game's reply to the last command, left out after a move and at the start).
* `native`: TextWorld's own text, without its ASCII-art banner and status line: the goal and
  room description first, then the game's reply to each command (partially observed:
  `history_turns = None`).

Actions are free-text commands ("go east", "take milk from counter"). Reward = the change of
TextWorld's cumulative score, so an episode's rewards sum to its final score; the episode ends when
the game is won (`success`) or lost, or after `max_turns`. A command that is not one of the game's
admissible commands is an ordinary step with `info["invalid"] = True` (the game still answers it:
usually "That's not a verb I recognise." and nothing changes, but a paraphrase such as "take milk"
acts like the admissible "take milk from counter"); commands that would leave the story
(quit, restart, undo, save, ...), several commands at once, or text with punctuation never reach
the game: they get "I don't understand that." and change nothing. `info["admissible_commands"]`
lists the commands the game accepts next, for scripted policies.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

from qsft.envs.base import StepResult, TextEnv
from qsft.envs.textworld.games import (
    GAME_FILE,
    ensure_game,
    exits,
    facts_by_name,
    load_meta,
    nav_next_command,
    player_room,
    quiet_jericho,
    task_spec,
)
from qsft.errors import ConfigError, EnvError

# Verbs that would leave the story or replay input instead of acting in the world.
META_VERBS = frozenset({"quit", "q", "restart", "restore", "save", "undo", "script", "unscript", "transcript",
                        "noscript", "again", "g", "oops"})
COMMAND_CHARS = re.compile(r"^[a-z0-9' -]+$")
MAX_COMMAND_CHARS = 80
NOT_UNDERSTOOD = "I don't understand that."
SCORE_LINE = re.compile(r"Your score has just gone (up|down) by [a-z0-9]+ points?\.")


def normalize_command(action: str) -> str | None:
    """Lower-cased, single-spaced command, or None when it must not reach the game (see module doc)."""
    command = " ".join(action.lower().split())
    if not command or len(command) > MAX_COMMAND_CHARS or not COMMAND_CHARS.match(command):
        return None
    words = command.split()
    if words[0] in META_VERBS or "then" in words:
        return None
    return command


def clean_feedback(text: str) -> str:
    """TextWorld's reply without the prompt/status line, score notices and end-of-game boilerplate."""
    text = text.split("*** The End ***")[0]
    text = re.split(r"\n>", text)[0]
    text = SCORE_LINE.sub("", text)
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return "\n".join(p for p in paragraphs if p)


def _listing(names: list[str]) -> str:
    return ", ".join(names) if names else "nothing"


def render_room(facts) -> tuple[str, str]:
    """("Office. Exits: east, west. Here: counter (on it: milk), crate (closed).", "Carrying: milk.")."""
    grouped = facts_by_name(facts)
    here = player_room(grouped) or "somewhere"
    closed = {f[0] for f in grouped.get("closed", []) + grouped.get("locked", [])}
    is_open = {f[0] for f in grouped.get("open", [])}
    held: dict[str, list[str]] = {}  # supporter or container -> what is on / in it
    for relation in ("on", "in"):
        for thing, holder in grouped.get(relation, []):
            held.setdefault(holder, []).append(thing)
    things = []
    for thing, room in sorted(grouped.get("at", [])):
        if room != here or thing == "P":
            continue
        contents = sorted(held.get(thing, []))
        if thing in closed:
            things.append(f"{thing} (closed)")
        elif thing in is_open:
            things.append(f"{thing} (open, in it: {_listing(contents)})")
        elif contents:
            things.append(f"{thing} (on it: {_listing(contents)})")
        else:
            things.append(thing)
    doors = {a: door for a, door, b in grouped.get("link", []) if b == here}
    directions = []
    for direction, room in exits(grouped, here).items():
        door = doors.get(room)
        directions.append(f"{direction} ({door}, closed)" if door and door in closed else direction)
    room_line = f"{here[:1].upper()}{here[1:]}. Exits: {_listing(directions)}. Here: {_listing(things)}."
    return room_line, f"Carrying: {_listing(sorted(held.get('I', [])))}."


class TextWorldEnv(TextEnv):
    """One TextWorld task over a pool of generated games (see the module docstring)."""

    reward_range = (0.0, 1.0)
    min_return = 0.0  # nothing achieved; scores never go down in these tasks
    # Pay 1 on winning: with gamma < 1 a shorter solution is worth more (every task's score is
    # reached only by winning, so success and "full score" coincide).
    default_reward_transform = "success"
    default_gamma = 0.95  # the paper's ALFWorld value
    default_beta = 1.0
    action_hint = "a text command such as: go north, take apple from table, open fridge"

    def __init__(self, task: str = "nav", pool_size: int | None = None, game_seed: int = 0,
                 observation: str = "compact", max_turns: int | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.spec = task_spec(task)
        self.name = f"textworld-{task}"
        self.pool_size = self.spec.pool_size if pool_size is None else int(pool_size)
        if self.pool_size < 1:
            raise ConfigError(f"{self.name}: pool_size must be at least 1, got {pool_size}")
        if observation not in ("compact", "native"):
            raise ConfigError(f"{self.name}: observation must be 'compact' or 'native', got {observation!r}")
        self.observation = observation
        self.history_turns = 1 if observation == "compact" else None
        self.max_turns = self.spec.max_turns if max_turns is None else int(max_turns)
        self.game_seed = int(game_seed)
        self.cache_dir = cache_dir
        self.game_index = 0
        self.meta: dict[str, Any] = {}
        self.state = None  # TextWorld's GameState after the last command
        self.score = 0.0
        self._game = None  # the running TextWorld environment
        self._game_path: Path | None = None

    # ---- games ----
    def game_folder(self, index: int) -> Path:
        """The compiled game `index` of the pool (built now if it is not cached)."""
        return ensure_game(self.spec, self.game_seed + index, self.cache_dir)

    def game_for_seed(self, seed: int | None) -> int:
        return random.randrange(self.pool_size) if seed is None else seed % self.pool_size

    def _start(self, index: int):
        folder = self.game_folder(index)
        path = folder / GAME_FILE
        if self._game is None or self._game_path != path:
            import textworld

            self.close()
            infos = textworld.EnvInfos(facts=True, admissible_commands=True, won=True, lost=True,
                                       objective=True, description=True,
                                       policy_commands=self.spec.kind != "nav")
            with quiet_jericho():
                self._game = textworld.start(str(path), request_infos=infos)
            self._game_path = path
            self.meta = load_meta(folder)
        return self._game

    # ---- what policies read ----
    @property
    def admissible_commands(self) -> list[str]:
        return list(self.state["admissible_commands"]) if self.state is not None else []

    @property
    def rooms(self) -> list[str]:
        """Every room of the current game."""
        facts = self.state["facts"] if self.state is not None else []
        return sorted({arg.name for fact in facts for arg in fact.arguments if arg.type == "r"})

    @property
    def current_room(self) -> str | None:
        return player_room(facts_by_name(self.state["facts"])) if self.state is not None else None

    def optimal_command(self) -> str | None:
        """The next command of a shortest solution from the current state (None once solved)."""
        if self.state is None:
            raise EnvError(f"{self.name}: call reset() first")
        if self.spec.kind == "nav":
            return nav_next_command(self.state["facts"], self.meta)
        commands = self.state["policy_commands"]
        return commands[0] if commands else None

    def optimal_return(self, seed: int | None = None) -> float:
        index = self.game_index if seed is None else self.game_for_seed(seed)
        return float(load_meta(self.game_folder(index))["max_score"])

    # ---- text ----
    @property
    def goal(self) -> str:
        return self.spec.goal or self.meta.get("goal") or clean_feedback(self.meta["objective"])

    def _observe(self, reply: str | None) -> str:
        if self.observation == "native":
            return (reply if reply else "(no reply)") + "\n"
        room, carrying = render_room(self.state["facts"])
        lines = [f"Goal: {self.goal}"]
        if reply and not reply.startswith("-="):  # a move's reply is the new room's description
            lines.append(reply.split("\n")[0])
        return "\n".join([*lines, room, carrying]) + "\n"

    # ---- protocol ----
    def _reset(self, seed: int | None) -> str:
        self.game_index = self.game_for_seed(seed)
        self.state = self._start(self.game_index).reset()
        self.score = 0.0
        if self.observation == "native":
            return self._observe(f"{clean_feedback(self.state['objective'])}\n"
                                 f"{clean_feedback(self.state['description'])}")
        return self._observe(None)

    def _step(self, action: str) -> StepResult:
        command = normalize_command(action)
        admissible = set(self.admissible_commands)
        if command is None:
            observation = self._observe(NOT_UNDERSTOOD)
            return observation, 0.0, False, {"invalid": True, "admissible_commands": sorted(admissible),
                                             "score": self.score}
        self.state, score, done = self._game.step(command)
        reward, self.score = float(score) - self.score, float(score)
        info: dict[str, Any] = {"invalid": command not in admissible, "score": self.score,
                                "admissible_commands": self.admissible_commands}
        if done:
            info["success"] = bool(self.state["won"])
            info["lost"] = bool(self.state["lost"])
        return self._observe(clean_feedback(self.state.feedback)), reward, bool(done), info

    def close(self) -> None:
        if self._game is not None:
            self._game.close()
        self._game, self._game_path = None, None
