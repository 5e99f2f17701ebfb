"""TextWorldExpress games as qsft text environments (`twx-cookingworld`, `twx-coin`, `twx-twc`).

TextWorldExpress (Jansen & Côté 2022; `pip install 'qsft[engines]'`, `java` on PATH; tested with
OpenJDK 17) generates and simulates text games in a Java engine, reached from Python through py4j:

* `cookingworld` — read the cookbook, gather the ingredients, cut and cook them as it says, prepare
  and eat the meal (3 rooms, 2 ingredients, 2 distractors; eating or cooking the wrong thing fails);
* `coin` — Coin Collector: find the coin somewhere in 9 rooms and take it (the `optimal` policy walks
  the shortest route, knowing where the coin is; an agent that does not know must explore);
* `twc` — TextWorld Commonsense: put 2 misplaced items where they belong (2 rooms).

Small worlds without doors or an inventory limit (`TASKS`), so gold paths stay short for small models.

Games and splits: `reset(seed)` plays game `seeds[seed % len(seeds)]` of the engine's own seed list of
`split` (`"train"`, `"dev"` or `"test"`: 1,000 disjoint games each). Datasets come from `train` (the
default); `qsft eval --env-arg split=test` evaluates on games never seen in training.

Engine: one JVM per environment instance, started by the first `reset` (not by `make`, so building
an environment is cheap) and reused by every later reset; `close()` stops it (a JVM left running is
also stopped when Python exits). JVM start-up plus the first game: 0.7-1.0 s measured.

Actions are the engine's commands ("move north", "take red apple", "cook red apple in oven"). The
engine is case- and whitespace-sensitive ("take clean blue T-shirt"); runs of whitespace are collapsed
before sending, nothing else is changed. A command it does not understand ("Unknown action: I'm not
sure what you mean.") is an ordinary step with `info["invalid"] = True`: nothing changes, the turn
counts. `info["admissible"]` lists the commands the engine accepts next.

Rewards: the change of the engine's score (0..1, 1 = task done), so an episode's rewards sum to its
final score. The score can go down (twc: taking an item out of its proper place again, -0.25), and
CookingWorld can end in failure keeping the score earned so far. The episode ends on the engine's
task success (`info["success"]`) or failure, or after `max_turns` (about 2-3x the longest gold path).
`episode_return:0:1` pays the final score on the last turn (every discounted partial return in [0, 1];
`scale` would refuse the negative rewards).

Observations (`observation=`), always the task description first:

* `raw`: the engine's text, trailing spaces trimmed.
* `compact` (the default): room descriptions and inventories condensed, nothing else changed:

      You are in the kitchen. In one part of the room you see a stove. There is also a fridge that is
      closed. You also see a counter that has a knife, and a cookbook on it. ...
      To the North you see the pantry.
  becomes
      Kitchen: stove; fridge (closed); counter (on it: knife, cookbook); ...
      Exits: north (pantry).

  Whitespace words per observation, 20 gold episodes per game (train seeds 0-19), raw -> compact:
  cookingworld 34.4 -> 13.2, coin 116.9 -> 27.7, twc 48.2 -> 14.8. Every room description is the
  longest part of the text and a move prints one, so compact cuts transcripts to a quarter to
  two fifths of their length (history_turns is None: the whole history is the context, as the task is
  only in the first observation) and keeps every name the commands need: the default.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from qsft.envs.base import StepResult, TextEnv
from qsft.errors import ConfigError, EnvError

SPLITS = ("train", "dev", "test")
OBSERVATIONS = ("compact", "raw")
NOT_UNDERSTOOD = "Unknown action"
# The engine's own episode limit, kept out of the way: `TextEnv.max_turns` ends episodes.
ENGINE_STEP_LIMIT = 1_000_000


@dataclass(frozen=True)
class TwxTask:
    """One registered game: its engine name, generation parameters and episode constants."""

    game: str
    params: str
    max_turns: int
    # Mean return of the `random` policy (uniform admissible commands) within `max_turns`; the
    # normalised score's 0. The optimal return is 1.0 everywhere (the gold path wins with score 1).
    min_return: float
    # The default P of `half-competent[:P]`, chosen so that a minority of its episodes win (LMRL-Gym's shape).
    half_competent: float


# Measured on train games (gold: seeds 0-199; the others: 200 episodes, generate_episodes(..., seed=1)):
# gold path length mean / max (commands until the task is done); `random` mean return, success rate;
# default `half-competent` success rate.
TASKS: dict[str, TwxTask] = {
    # gold 16.4 / 22; random 0.146, success 0% (27% end in failure); half-competent 20%
    "cookingworld": TwxTask("cookingworld", "numLocations=3,numIngredients=2,numDistractorItems=2,includeDoors=0,"
                            "limitInventorySize=0", max_turns=50, min_return=0.146, half_competent=0.5),
    # gold 2.9 / 6 (the shortest route, see `TwxEnv._coin_route`); random 0.25, success 25%;
    # half-competent 34%
    "coin": TwxTask("coin", "numLocations=9,numDistractorItems=0,includeDoors=0,limitInventorySize=0",
                    max_turns=20, min_return=0.25, half_competent=0.2),
    # gold 6.2 / 8; random 0.149, success 1%; half-competent 31%
    "twc": TwxTask("twc", "numLocations=2,numItemsToPutAway=2,includeDoors=0,limitInventorySize=0",
                   max_turns=25, min_return=0.149, half_competent=0.5),
}

ROOM = re.compile(r"You are in the ([^.]+)\.\s*(.*)$")  # one line of a room description
ROOM_NAME = re.compile(r"You are in the ([^.]+)\.")
FILLER = re.compile(r"^(?:In one part of the room you see|In another part of the room you see|There is also|"
                    r"You also see) ")
ARTICLE = re.compile(r"^(?:a|an|some|the) ", re.IGNORECASE)
EXIT = re.compile(r"^To the (\w+) you see the (.+)$")
THING_FORMS = (  # (pattern, format) for one thing of a room description, most specific first
    (re.compile(r"^(?:an? )?open (.+), that contains (.+)$", re.IGNORECASE), "{0} (open, in it: {1})"),
    (re.compile(r"^(?:an? )?open (.+), that is empty$", re.IGNORECASE), "{0} (open, empty)"),
    (re.compile(r"^(.+?),? that has nothing on it$"), "{0}"),
    (re.compile(r"^(.+?) that is closed$"), "{0} (closed)"),
    (re.compile(r"^(.+?) that has (.+) on it$"), "{0} (on it: {1})"),
)


def _listing(text: str) -> str:
    """"a knife, a red apple, and a cookbook" -> "knife, red apple, cookbook"."""
    return ", ".join(ARTICLE.sub("", re.sub(r"^and ", "", part.strip())) for part in text.split(", "))


def compact_thing(phrase: str) -> str:
    for pattern, form in THING_FORMS:
        match = pattern.match(phrase)
        if match:
            return form.format(*(_listing(group) for group in match.groups()))
    return ARTICLE.sub("", phrase)


def compact_room(line: str) -> str:
    """"You are in the kitchen. In one part of the room you see a stove. ..." -> "Kitchen: stove; ..."."""
    match = ROOM.match(line)
    if match is None:
        return line
    room, rest = match.groups()
    things = [compact_thing(FILLER.sub("", sentence)) for sentence in re.split(r"\.\s+|\.$", rest) if sentence]
    return f"{room[:1].upper()}{room[1:]}: {'; '.join(things) or 'nothing'}."


def compact_exits(line: str) -> str:
    """"To the North you see the pantry. To the West ..." -> "Exits: north (pantry), west (...)."."""
    exits = []
    for sentence in (s for s in re.split(r"\.\s+|\.$", line) if s):
        match = EXIT.match(sentence)
        exits.append(f"{match.group(1).lower()} ({match.group(2)})" if match else sentence)
    return f"Exits: {', '.join(exits)}."


def compact_text(text: str) -> str:
    """The engine's reply with room descriptions and inventories condensed (module docstring)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines[:1] == ["Inventory:"]:
        items = [ARTICLE.sub("", line) for line in lines[1:] if line != "Your inventory is currently empty."]
        return f"Inventory: {', '.join(items) or 'nothing'}."
    return "\n".join(compact_room(line) if line.startswith("You are in the ")
                     else compact_exits(line) if line.startswith("To the ") else line for line in lines)


def room_of(look: str) -> str | None:
    """"kitchen" for the engine's "You are in the kitchen. ..." (None for any other text)."""
    match = ROOM_NAME.match(look)
    return match.group(1) if match else None


def raw_text(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


class TwxEnv(TextEnv):
    """One TextWorldExpress game type over a split's games (see the module docstring)."""

    reward_range = (-1.0, 1.0)
    default_reward_transform = "episode_return:0:1"
    default_gamma = 0.95  # as textworld-*: gold paths of 1-22 commands
    default_beta = 1.0
    history_turns = None  # partially observed: the task and what was seen are in earlier turns
    action_hint = "a text command such as: move north, take red apple, open fridge, cook red apple in oven"

    def __init__(self, game: str = "cookingworld", split: str = "train", observation: str = "compact",
                 max_turns: int | None = None) -> None:
        super().__init__()
        if game not in TASKS:
            raise ConfigError(f"twx: unknown game {game!r}; use one of {', '.join(TASKS)}")
        self.task = TASKS[game]
        self.name = f"twx-{game}"
        if split not in SPLITS:
            raise ConfigError(f"{self.name}: split must be one of {', '.join(SPLITS)}, got {split!r}")
        if observation not in OBSERVATIONS:
            raise ConfigError(f"{self.name}: observation must be 'compact' or 'raw', got {observation!r}")
        self.split = split
        self.observation = observation
        self.max_turns = self.task.max_turns if max_turns is None else int(max_turns)
        self.min_return = self.task.min_return
        self.game_seed: int | None = None  # the engine's seed of the game being played
        self.gold_actions: list[str] = []  # that game's gold path (`_play_gold_path`, `_coin_route`)
        self.history: list[tuple[str, bool]] = []  # (command sent, understood) per turn
        self.admissible: list[str] = []
        self.look = ""  # the engine's description of the current room
        self.score = 0.0
        self._engine = None
        self.seeds: list[int] = []  # the split's game seeds, known once the engine runs

    # ---- engine ----
    def _start(self):
        if self._engine is None:
            try:
                from textworld_express import TextWorldExpressEnv
            except ImportError:
                raise EnvError(f"{self.name} needs the `textworld-express` package: pip install 'qsft[engines]' "
                               "(or ./scripts/setup.sh)") from None
            try:
                self._engine = TextWorldExpressEnv(envStepLimit=ENGINE_STEP_LIMIT)
            except OSError as err:
                raise EnvError(f"{self.name}: cannot start the TextWorldExpress JVM ({err}); it needs `java` "
                               "on PATH (Debian: apt-get install default-jre-headless)") from None
            self._engine.load(self.task.game, self.task.params)
            self.seeds = list({"train": self._engine.getValidSeedsTrain, "dev": self._engine.getValidSeedsDev,
                                "test": self._engine.getValidSeedsTest}[self.split]())
        return self._engine

    def game_for_seed(self, seed: int | None) -> int:
        """The engine seed of the game `reset(seed)` plays (starts the engine if needed)."""
        self._start()
        return random.choice(self.seeds) if seed is None else self.seeds[seed % len(self.seeds)]

    # ---- what policies read ----
    @property
    def current_room(self) -> str | None:
        return room_of(self.look)

    def optimal_return(self, seed: int | None = None) -> float:
        return 1.0  # every game's gold path wins, with the full score

    # ---- protocol ----
    def _observe(self, reply: str, task: str | None = None) -> str:
        text = compact_text(reply) if self.observation == "compact" else raw_text(reply)
        return (f"{task}\n" if task else "") + (text or "(no reply)") + "\n"

    def _update(self, infos: dict[str, Any]) -> None:
        self.admissible = sorted(infos["validActions"])
        self.look = infos["look"]
        self.score = float(infos["score"])

    def _reset(self, seed: int | None) -> str:
        engine = self._start()
        self.game_seed = self.game_for_seed(seed)
        self.gold_actions = self._coin_route(engine) if self.task.game == "coin" else self._play_gold_path(engine)
        observation, infos = self._new_game(engine, gold=False)
        self.history = []
        self._update(infos)
        return self._observe(observation, task=infos["taskDescription"])

    def _new_game(self, engine, gold: bool) -> tuple[str, dict[str, Any]]:
        return engine.reset(seed=self.game_seed, gameFold=self.split, gameName=self.task.game,
                            gameParams=self.task.params, generateGoldPath=gold)

    def _play_gold_path(self, engine) -> list[str]:
        """The engine's gold path of game `game_seed`, played once: the commands the engine understood, minus
        "look around" (the observation shows the room already; a few gold paths also repeat a command the
        engine then refuses, such as opening an open cupboard). Fails loudly if the path does not win."""
        _, infos = self._new_game(engine, gold=True)
        gold = list(engine.getGoldActionSequence())
        kept = []
        for command in gold:
            reply, _, _, infos = engine.step(command)
            if not reply.startswith(NOT_UNDERSTOOD) and command != "look around":
                kept.append(command)
        if not infos["tasksuccess"]:
            raise EnvError(f"{self.name}: the engine's gold path {gold} does not win game {self.game_seed} "
                           f"({self.split}); this is a TextWorldExpress bug")
        return kept

    def _coin_route(self, engine) -> list[str]:
        """Coin's shortest route to the coin, then "take coin" (ties broken by command name).

        The engine's coin gold path is a random walk from an unseeded generator, different on every reset
        of the same game; this route is found by walking the whole map in the engine (every room's moves,
        depth first, each undone by the opposite move) and a breadth-first search of it."""
        back = {"north": "south", "south": "north", "east": "west", "west": "east"}
        graph: dict[str, dict[str, str]] = {}  # room -> {move command: room it leads to}
        coin_rooms = []

        def explore(room: str, infos: dict[str, Any]) -> None:
            graph[room] = {}
            if "take coin" in infos["validActions"]:
                coin_rooms.append(room)
            for move in sorted(c for c in infos["validActions"] if c.startswith("move ")):
                _, _, _, there_infos = engine.step(move)
                there = room_of(there_infos["look"])
                graph[room][move] = there
                if there not in graph:
                    explore(there, there_infos)
                _, _, _, again = engine.step(f"move {back[move.split()[1]]}")
                if room_of(again["look"]) != room:
                    raise EnvError(f"{self.name}: game {self.game_seed}: '{move}' from the {room} is one-way")

        _, infos = self._new_game(engine, gold=False)
        start = room_of(infos["look"])
        explore(start, infos)
        if not coin_rooms:
            raise EnvError(f"{self.name}: game {self.game_seed} ({self.split}) has no room with a coin to take")
        routes = {start: []}
        frontier = [start]
        while frontier:
            room = frontier.pop(0)
            for move, there in sorted(graph[room].items()):
                if there not in routes:
                    routes[there] = [*routes[room], move]
                    frontier.append(there)
        return [*routes[coin_rooms[0]], "take coin"]

    def _step(self, action: str) -> StepResult:
        command = " ".join(action.split())
        previous = self.score
        observation, _, _, infos = self._engine.step(command)
        understood = not observation.startswith(NOT_UNDERSTOOD)
        self.history.append((command, understood))
        self._update(infos)
        done = bool(infos["tasksuccess"] or infos["taskfailure"])
        info: dict[str, Any] = {"invalid": not understood, "admissible": list(self.admissible), "score": self.score}
        if done:
            info["success"] = bool(infos["tasksuccess"])
        return self._observe(observation), self.score - previous, done, info

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
        self._engine = None
