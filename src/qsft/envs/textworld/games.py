"""TextWorld games owned by the project: generation, the on-disk cache, and the nav solver.

Tasks (`TASKS`):

* `nav`, `nav-hard` — Text-Nav-like household tasks in the manner of LMRL-Gym: a small house of
  rooms joined into a random tree (4 rooms, resp. 6), a food item on a piece of furniture, a
  closed container elsewhere; the goal is to put the food into the container (`nav-hard`: and
  close it again), with distractor objects (1, resp. 3, one of them a second closed container).
  Eating the food loses the game. Score 1 on winning. Built with TextWorld's `GameMaker`.
* `simple` — TextWorld's `tw-simple` challenge (dense rewards, brief goal): a fixed house, a key,
  a locked door, an item to bring somewhere; one point per quest step.
* `coin` — TextWorld's `tw-coin_collector` challenge (level 5: a chain of five rooms, take the
  coin at its end; score 1).

Games are compiled (Inform 7 -> .z8, ~1-3 s each) once per (task, options, seed) into
`<cache>/<task>-seed<k>-<key>/` where `<cache>` is `$QSFT_CACHE/textworld` (default
`~/.cache/qsft/textworld`) and `<key>` hashes the generation options and `GENERATOR_VERSION`.
A game is built in a temp folder beside it, its walkthrough is played to check that it wins, and
only then is the folder renamed into place, so a reader never sees a half-built game.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qsft.errors import EnvError

# Bump when a builder changes what it generates: cached games of an older version are not reused.
GENERATOR_VERSION = 1
GAME_FILE = "game.z8"
META_FILE = "meta.json"
DIRECTIONS = ("north", "south", "east", "west")
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}
STEP = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}

ROOMS = ("kitchen", "living room", "bedroom", "bathroom", "office", "dining room", "hallway", "pantry")
FOODS = ("stale food", "apple", "cheese", "bread", "milk")
SUPPORTERS = ("table", "desk", "shelf", "counter", "bench")
CONTAINERS = ("fridge", "chest", "cabinet", "crate")
OBJECTS = ("bowl", "plate", "coffee cup", "book", "candle", "towel")


@dataclass(frozen=True)
class TaskSpec:
    """How one task's games are generated and played."""

    name: str
    kind: str  # "nav" (our GameMaker builder) or a TextWorld challenge name ("tw-simple", ...)
    options: dict[str, Any]
    max_turns: int
    pool_size: int
    # The short goal shown in compact observations (None: the game's own objective text).
    goal: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)


TASKS: dict[str, TaskSpec] = {
    "nav": TaskSpec("nav", "nav", {"rooms": 4, "distractors": 1, "close": False}, max_turns=20, pool_size=4),
    "nav-hard": TaskSpec("nav-hard", "nav", {"rooms": 6, "distractors": 3, "close": True}, max_turns=30,
                         pool_size=8),
    "simple": TaskSpec("simple", "tw-simple", {"rewards": "dense", "goal": "brief", "test": False},
                       max_turns=30, pool_size=4),
    "coin": TaskSpec("coin", "tw-coin_collector", {"level": 5}, max_turns=20, pool_size=8,
                     goal="Find the coin and take it."),
}


def task_spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise EnvError(f"unknown TextWorld task {task!r}; known: {', '.join(TASKS)}")
    return TASKS[task]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where compiled games live: `cache_dir`, else `$QSFT_CACHE/textworld`, else ~/.cache/qsft/textworld."""
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("QSFT_CACHE")
    return Path(base) / "textworld" if base else Path.home() / ".cache" / "qsft" / "textworld"


def game_dir(spec: TaskSpec, seed: int, cache_dir: str | os.PathLike | None = None) -> Path:
    key = json.dumps({"kind": spec.kind, "options": spec.options, "version": GENERATOR_VERSION,
                      "textworld": _textworld().__version__}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return cache_root(cache_dir) / f"{spec.name}-seed{seed}-{digest}"


def ensure_game(spec: TaskSpec, seed: int, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the compiled game (task `spec`, generation seed `seed`), building it if needed."""
    final = game_dir(spec, seed, cache_dir)
    if (final / META_FILE).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        with quiet_jericho():  # tw-simple plays its walkthrough while it builds
            meta = _build(spec, seed, tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same game first: keep theirs
            if not (final / META_FILE).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / META_FILE).read_text())


@contextlib.contextmanager
def quiet_jericho() -> Iterator[None]:
    """Silence jericho's "game not fully supported" warning: TextWorld tracks the score itself."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is not fully supported")
        yield


def _textworld():
    try:
        import textworld
    except ImportError:
        raise EnvError("the textworld environments need the `textworld` package: "
                       "pip install 'qsft[textworld]' (or ./scripts/setup.sh)") from None
    return textworld


def _options(seed: int, folder: Path, plain_text: bool):
    textworld = _textworld()
    options = textworld.GameOptions()
    options.seeds = seed
    options.path = str(folder / GAME_FILE)
    options.force_recompile = True
    if plain_text:  # plain names and short replies for Text-Nav (blended descriptions print "None"s)
        options.grammar.include_adj = False
        options.grammar.only_last_action = True
    return options


def _build(spec: TaskSpec, seed: int, folder: Path) -> dict[str, Any]:
    textworld = _textworld()
    from textworld.generator import compile_game

    options = _options(seed, folder, plain_text=spec.kind == "nav")
    if spec.kind == "nav":
        game, meta = build_nav_game(options, random.Random(seed), **spec.options)
    else:
        from textworld.challenges import CHALLENGES

        game = CHALLENGES[spec.kind][1](dict(spec.options), options)
        meta = {}
    compile_game(game, options)
    meta.update({"task": spec.name, "seed": seed, "max_score": float(game.max_score),
                 "objective": game.objective, "generator_version": GENERATOR_VERSION,
                 "options": spec.options})
    meta["walkthrough"] = _play_walkthrough(textworld, folder / GAME_FILE, meta, spec)
    return meta


def _play_walkthrough(textworld, path: Path, meta: dict[str, Any], spec: TaskSpec) -> list[str]:
    """Solve the freshly compiled game from its start; fail loudly if the solver does not win."""
    infos = textworld.EnvInfos(facts=True, policy_commands=spec.kind != "nav")
    with quiet_jericho():
        env = textworld.start(str(path), request_infos=infos)
    try:
        state = env.reset()
        commands: list[str] = []
        for _ in range(100):
            command = (nav_next_command(state["facts"], meta) if spec.kind == "nav"
                       else (state["policy_commands"] or [None])[0])
            if command is None:
                break
            commands.append(command)
            state, score, done = env.step(command)
            if done:
                break
        if not (state["won"] and score == meta["max_score"]):
            raise EnvError(f"generated TextWorld game {spec.name} seed {meta['seed']} is not won by its "
                           f"walkthrough {commands}; this is a bug in qsft's game builder")
        return commands
    finally:
        env.close()


# ---- the nav task: builder and solver ------------------------------------------------------------

def _house_layout(n_rooms: int, rng: random.Random) -> tuple[list[tuple[int, int]], list[tuple[int, int, str]]]:
    """`n_rooms` grid cells grown as a random tree: (cells in growth order, edges (parent, child, direction))."""
    cells = [(0, 0)]
    edges: list[tuple[int, int, str]] = []
    while len(cells) < n_rooms:
        parent = rng.randrange(len(cells))
        direction = rng.choice(DIRECTIONS)
        dx, dy = STEP[direction]
        cell = (cells[parent][0] + dx, cells[parent][1] + dy)
        if cell not in cells:
            cells.append(cell)
            edges.append((parent, len(cells) - 1, direction))
    return cells, edges


def build_nav_game(options, rng: random.Random, rooms: int, distractors: int, close: bool):
    """A Text-Nav house (see the module docstring); returns (textworld Game, meta for the solver)."""
    textworld = _textworld()
    from textworld.generator.game import Event, Quest

    maker = textworld.GameMaker(options)
    names = rng.sample(ROOMS, rooms)
    _, edges = _house_layout(rooms, rng)
    house = [maker.new_room(name) for name in names]
    for parent, child, direction in edges:
        maker.connect(getattr(house[parent], direction), getattr(house[child], OPPOSITE[direction]))
    food_room, container_room = rng.sample(house, 2)
    supporter_names = rng.sample(SUPPORTERS, 2)
    container_names = rng.sample(CONTAINERS, 2)
    food_name = rng.choice(FOODS)
    supporter = maker.new(type="s", name=supporter_names[0])
    food_room.add(supporter)
    food = maker.new(type="f", name=food_name)
    supporter.add(food)
    container = maker.new(type="c", name=container_names[0])
    maker.add_fact("closed", container)
    container_room.add(container)
    extras: list = []
    if distractors >= 3:  # a second container and a second supporter to confuse "which one"
        decoy = maker.new(type="c", name=container_names[1])
        maker.add_fact("closed", decoy)
        rng.choice([r for r in house if r is not container_room]).add(decoy)
        extras.append(decoy)
        stand = maker.new(type="s", name=supporter_names[1])
        rng.choice(house).add(stand)
    for name in rng.sample(OBJECTS, max(distractors - len(extras), 0)):
        thing = maker.new(type="o", name=name)
        rng.choice([supporter, *house]).add(thing)
    start = rng.choice([r for r in house if r is not food_room])
    maker.set_player(start)
    win = {maker.new_fact("in", food, container)}
    if close:
        win.add(maker.new_fact("closed", container))
    maker.quests = [Quest(win_events=[Event(conditions=win)],
                          fail_events=[Event(conditions={maker.new_fact("eaten", food)})], reward=1)]
    game = maker.build()
    goal = (f"Put the {food_name} from the {supporter.name} in the {food_room.name} into the "
            f"{container.name} in the {container_room.name}" + (", then close it." if close else "."))
    game.objective = goal
    meta = {"goal": goal, "food": food_name, "container": container.name, "container_room": container_room.name,
            "close": close, "rooms": [r.name for r in house]}
    return game, meta


def facts_by_name(facts: Iterable) -> dict[str, list[tuple[str, ...]]]:
    """TextWorld propositions grouped by predicate: {"at": [("P", "kitchen"), ...], ...}."""
    grouped: dict[str, list[tuple[str, ...]]] = {}
    for fact in facts:
        grouped.setdefault(fact.name, []).append(tuple(arg.name or arg.type for arg in fact.arguments))
    return grouped


def player_room(grouped: dict[str, list[tuple[str, ...]]]) -> str | None:
    return next((room for thing, room in grouped.get("at", []) if thing == "P"), None)


def exits(grouped: dict[str, list[tuple[str, ...]]], room: str) -> dict[str, str]:
    """direction -> neighbouring room ("north_of(a, b)": a lies north of b)."""
    return {d: a for d in DIRECTIONS for a, b in grouped.get(f"{d}_of", []) if b == room}


def path_step(grouped: dict[str, list[tuple[str, ...]]], start: str, goal: str) -> str | None:
    """First "go <direction>" of a shortest path between rooms (None when already there or cut off)."""
    first: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        room = queue.popleft()
        if room == goal:
            return first[room]
        for direction, neighbour in exits(grouped, room).items():
            if neighbour not in first:
                first[neighbour] = first[room] or f"go {direction}"
                queue.append(neighbour)
    return None


def nav_next_command(facts: Iterable, meta: dict[str, Any]) -> str | None:
    """The optimal next command of a nav game from its current facts (None: nothing left to do)."""
    grouped = facts_by_name(facts)
    here = player_room(grouped)
    food, container = meta["food"], meta["container"]
    is_open = (container,) in grouped.get("open", [])
    if (food, container) in grouped.get("in", []):
        if meta["close"] and is_open:
            return _towards(grouped, here, meta["container_room"]) or f"close {container}"
        return None
    if (food, "I") in grouped.get("in", []):
        step = _towards(grouped, here, meta["container_room"])
        if step:
            return step
        return f"insert {food} into {container}" if is_open else f"open {container}"
    holder_room = {thing: room for thing, room in grouped.get("at", [])}
    on = dict(grouped.get("on", []))
    inside = {thing: box for thing, box in grouped.get("in", []) if box != "I"}
    holder = on.get(food) or inside.get(food)
    room = holder_room.get(holder) if holder else holder_room.get(food)
    step = _towards(grouped, here, room)
    if step:
        return step
    if food in inside and (holder,) not in grouped.get("open", []):
        return f"open {holder}"
    return f"take {food} from {holder}" if holder else f"take {food}"


def _towards(grouped: dict[str, list[tuple[str, ...]]], here: str | None, room: str | None) -> str | None:
    if here is None or room is None or here == room:
        return None
    return path_step(grouped, here, room)

