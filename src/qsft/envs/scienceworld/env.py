"""ScienceWorld tasks as qsft text environments (`sciworld-find-living-thing`, `sciworld-lifespan-longest-lived`).

ScienceWorld (Wang et al. 2022; `pip install 'qsft[engines]'`, `java` on PATH; tested with OpenJDK 17)
simulates a house with a greenhouse, a workshop, an outside, ... and grade-school science tasks in a
Java engine reached through py4j. Two tasks with short gold paths (`TASKS`):

* `find-living-thing` — "find a(n) living thing. First, focus on the thing. Then, move it to the red
  box in the kitchen": walk to the outside, focus on an animal (egg), carry it to the box;
* `lifespan-longest-lived` — "find the animal with the longest life span. The animals are in the
  'outside' location. Focus on the animal with the longest life span": knowledge, then one focus.

Focusing on the wrong thing fails the task at once (score -100), which is how most random episodes end.
Both use the engine's `noElectricalAction` simplification (`simplifications=`; "" for none): it only
removes the ~300 "connect X to Y" commands that these tasks never need from the admissible list
(93 instead of 417 in the first room of find-living-thing), so random behavior is not mostly wiring.

Variations and splits: `reset(seed)` loads variation `variations[seed % len(variations)]` of the
engine's own `split` list (`"train"`, `"dev"` or `"test"`: disjoint; 150 / 75 / 75 for
find-living-thing, 62 / 31 / 32 for lifespan-longest-lived). Datasets come from `train` (the default);
`qsft eval --env-arg split=test` evaluates on variations never seen in training.

Engine: one JVM per environment instance, started by the first `reset` (not by `make`) and reused
by every later reset (a reset loads the next variation and its gold path: ~0.4 s); `close()` stops it
(a JVM left running is also stopped when Python exits). The first reset takes 2.4-2.7 s (JVM start-up
~0.6 s, then the first task loads). The JVM runs with a constant identity hash (`REPRODUCIBLE_JVM`):
without it the engine's gold path of a variation changes from load to load.

Actions are the engine's commands ("open door to greenhouse", "go to outside", "focus on dove",
"pick up dove"); runs of whitespace are collapsed before sending. A command the engine
does not understand ("No known action matches that input.", "Unknown action. ...") is an ordinary
step with `info["invalid"] = True`: nothing changes, the turn counts. When the engine asks which of
several matching objects was meant ("Ambiguous request: ... 0: ..."), its first reading is chosen
(`info["ambiguous"] = True`); otherwise the engine would read the next command as the answer. "reset task" (which resets the
engine's goal progress mid-episode) never reaches the engine: it is answered like a command the
engine does not know. `info["admissible"]` lists the engine's valid commands next (large: 90-400;
about a fifth of them, e.g. "look in cup containing blue paint", the engine's parser then refuses).

Rewards: the change of the engine's score (-100..100), reported as the engine gives it, so an
episode's rewards sum to its final score: 100 when the task is done (`info["success"]`), -100 when it
failed. Subgoals pay on the way (opening a door, entering a room, focusing on the right thing) and
failing takes it all back (a reward of -108 after +8). An episode ends on success or failure, or
after `max_turns` (about 2.5x the longest gold path). `episode_return:-100:100` maps the final score
into [0, 1] on the last turn (ended episodes are wins, 1, or failures, 0; `scale` would refuse the
negative rewards), so every discounted partial return lies in [0, 1].

Observations (`observation=`), the task description first:

* `raw`: the engine's text, trailing spaces trimmed (room listings are tab-indented lines);
* `compact` (the default): `look around` listings and the inventory condensed, nothing else changed:

      This room is called the hallway. In it, you see:
          the agent
          a substance called air
          a picture
      You also see:
          A door to the art studio (that is closed)
          A door to the greenhouse (that is open)
  becomes
      Hallway: picture
      Doors: art studio (closed); greenhouse (open)

  Whitespace words per observation on 20 gold episodes (train variations), raw -> compact:
  find-living-thing 18.7 -> 11.4, lifespan-longest-lived 28.3 -> 18.5 (per episode 224 -> 137 and
  128 -> 83): about 40% shorter. Listings are the only long texts (everything else is a one-line
  reply), the agent, the air and the articles in them are noise, and the whole history is the
  policy's context (history_turns is None: the task is only in the first observation), so compact is
  the default.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from qsft.envs.base import StepResult, TextEnv
from qsft.errors import ConfigError, EnvError

SPLITS = ("train", "dev", "test")
OBSERVATIONS = ("compact", "raw")
NOT_UNDERSTOOD = ("No known action matches that input.", "Unknown action.")
AMBIGUOUS = "Ambiguous request"
BLOCKED_VERBS = frozenset({"reset"})  # "reset task": resets the engine's goal progress mid-episode
ENGINE_STEP_LIMIT = 1_000_000  # the engine's own episode limit, kept out of the way of `max_turns`
# The engine builds gold paths by iterating sets of objects hashed by identity, so one variation's gold path
# changes from load to load (which route, which animal: 4 different ones in 5 loads of find-living-thing
# variation 4). A constant identity hash makes every load the same (measured: resets 0.39 s instead of 0.30 s,
# gold episodes ~12% slower).
REPRODUCIBLE_JVM = "-XX:+UnlockExperimentalVMOptions -XX:hashCode=2"


@contextlib.contextmanager
def java_options(options: str) -> Iterator[None]:
    """Add `options` to the options of JVMs started inside the block (JAVA_TOOL_OPTIONS)."""
    before = os.environ.get("JAVA_TOOL_OPTIONS")
    os.environ["JAVA_TOOL_OPTIONS"] = f"{before} {options}" if before else options
    try:
        yield
    finally:
        if before is None:
            del os.environ["JAVA_TOOL_OPTIONS"]
        else:
            os.environ["JAVA_TOOL_OPTIONS"] = before


@dataclass(frozen=True)
class SciTask:
    """One registered ScienceWorld task and its episode constants."""

    task: str
    max_turns: int
    # Mean return of the `random` policy (uniform admissible commands) within `max_turns`: the
    # normalised score's 0. The optimal return is 100 everywhere (the gold path wins with score 100).
    min_return: float
    # The default P of `half-competent[:P]`, chosen so that a minority of its episodes win (LMRL-Gym's shape).
    half_competent: float


# Measured on train variations (gold: every one; the others: 200 episodes, generate_episodes(..., seed=1)):
# gold path length mean / max (commands until the task is done); `random` mean return, success rate;
# default `half-competent` success rate.
TASKS: dict[str, SciTask] = {
    # gold 12.7 / 16; random -92.0, success 0.5% (5.5% cut by max_turns); half-competent 24.5%
    "find-living-thing": SciTask("find-living-thing", max_turns=40, min_return=-92.0, half_competent=0.7),
    # gold 4.8 / 7; random -82.75, success 1% (15% cut by max_turns); half-competent 26%
    "lifespan-longest-lived": SciTask("lifespan-longest-lived", max_turns=20, min_return=-82.75,
                                      half_competent=0.6),
}

LOOK_HEAD = re.compile(r"^This (?:room|outside location) is called the ([^.]+)\.")
ARTICLES = re.compile(r"\b(?:a|an|the|A|An|The) ")
DOOR = re.compile(r"^A door to the (.+?) \(that is (open|closed)\)$")
NOISE = frozenset({"the agent", "a substance called air"})


def room_of(look: str) -> str | None:
    """"hallway" for the engine's "This room is called the hallway. ..." (None for any other text)."""
    match = LOOK_HEAD.match(look)
    return match.group(1) if match else None


def _thing(line: str) -> str:
    line = line.replace("a substance called ", "").replace("(containing nothing)", "(empty)")
    return ARTICLES.sub("", line).rstrip(". ")


def compact_look(text: str) -> str | None:
    """A `look around` listing condensed (module docstring); None when `text` is not one."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    room = room_of(lines[0]) if lines else None
    if room is None:
        return None
    here: list[str] = []
    also: list[str] = []
    section = here
    for line in lines[1:]:
        if line == "You also see:":
            section = also
        elif line not in NOISE:
            section.append(line)
    doors = [DOOR.match(line) for line in also]
    out = [f"{room[:1].upper()}{room[1:]}: {'; '.join(_thing(t) for t in here) or 'nothing'}"]
    if also and all(doors):
        out.append("Doors: " + "; ".join(f"{m.group(1)} ({m.group(2)})" for m in doors))
    elif also:
        out.append("Also: " + "; ".join(_thing(t) for t in also))
    return "\n".join(out)


def compact_text(text: str) -> str:
    """The engine's reply with `look around` listings and the inventory condensed."""
    look = compact_look(text)
    if look is not None:
        return look
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines[:1] == ["In your inventory, you see:"]:
        return "Inventory: " + ("; ".join(_thing(t) for t in lines[1:]) or "nothing")
    return "\n".join(lines)


def raw_text(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


class SciWorldEnv(TextEnv):
    """One ScienceWorld task over a split's variations (see the module docstring)."""

    reward_range = (-200.0, 100.0)  # from a score of up to 99 straight to -100 on failure
    default_reward_transform = "episode_return:-100:100"
    default_gamma = 0.95  # gold paths of 1-16 commands
    default_beta = 1.0
    history_turns = None  # partially observed: the task and what was seen are in earlier turns
    action_hint = "a text command such as: open door to kitchen, go to kitchen, look around, focus on dove"

    def __init__(self, task: str = "find-living-thing", split: str = "train", observation: str = "compact",
                 simplifications: str = "noElectricalAction", max_turns: int | None = None) -> None:
        super().__init__()
        if task not in TASKS:
            raise ConfigError(f"sciworld: unknown task {task!r}; use one of {', '.join(TASKS)}")
        self.task = TASKS[task]
        self.name = f"sciworld-{task}"
        if split not in SPLITS:
            raise ConfigError(f"{self.name}: split must be one of {', '.join(SPLITS)}, got {split!r}")
        if observation not in OBSERVATIONS:
            raise ConfigError(f"{self.name}: observation must be 'compact' or 'raw', got {observation!r}")
        self.split = split
        self.observation = observation
        self.simplifications = simplifications
        self.max_turns = self.task.max_turns if max_turns is None else int(max_turns)
        self.min_return = self.task.min_return
        self.variation: int | None = None  # the engine's variation being played
        self.gold_actions: list[str] = []  # the engine's gold path of that variation (see REPRODUCIBLE_JVM)
        self.history: list[tuple[str, bool]] = []  # (command sent, understood) per turn
        self.admissible: list[str] = []
        self.look = ""  # the engine's `look around` text of the current room
        self.score = 0.0
        self._engine = None
        self.variations: list[int] = []  # the split's variations, known once the engine runs

    # ---- engine ----
    def _start(self):
        if self._engine is None:
            try:
                from scienceworld import ScienceWorldEnv
            except ImportError:
                raise EnvError(f"{self.name} needs the `scienceworld` package: pip install 'qsft[engines]' "
                               "(or ./scripts/setup.sh)") from None
            try:
                with java_options(REPRODUCIBLE_JVM):
                    self._engine = ScienceWorldEnv("", envStepLimit=ENGINE_STEP_LIMIT)
            except OSError as err:
                raise EnvError(f"{self.name}: cannot start the ScienceWorld JVM ({err}); it needs `java` on "
                               "PATH (Debian: apt-get install default-jre-headless)") from None
            self._engine.load(self.task.task, 0, self.simplifications)
            self.variations = list({"train": self._engine.get_variations_train,
                                     "dev": self._engine.get_variations_dev,
                                     "test": self._engine.get_variations_test}[self.split]())
        return self._engine

    def variation_for_seed(self, seed: int | None) -> int:
        """The engine variation `reset(seed)` plays (starts the engine if needed)."""
        self._start()
        return random.choice(self.variations) if seed is None else self.variations[seed % len(self.variations)]

    # ---- what policies read ----
    @property
    def current_room(self) -> str | None:
        return room_of(self.look)

    def optimal_return(self, seed: int | None = None) -> float:
        return 100.0  # every variation's gold path wins, with the full score

    # ---- protocol ----
    def _observe(self, reply: str, task: str | None = None) -> str:
        text = compact_text(reply) if self.observation == "compact" else raw_text(reply)
        return (f"{task}\n" if task else "") + (text or "(no reply)") + "\n"

    def _reset(self, seed: int | None) -> str:
        engine = self._start()
        self.variation = self.variation_for_seed(seed)
        engine.load(self.task.task, self.variation, self.simplifications, generateGoldPath=True)
        self.gold_actions = list(engine.get_gold_action_sequence())
        self.history = []
        self.score = 0.0
        self.look = engine.look()
        self.admissible = self._admissible(engine.get_valid_action_object_combinations())
        return self._observe(self.look, task=engine.get_task_description())

    @staticmethod
    def _admissible(valid: list[str]) -> list[str]:
        return sorted({command for command in valid if command.split(" ", 1)[0] not in BLOCKED_VERBS})

    def _step(self, action: str) -> StepResult:
        command = " ".join(action.split())
        if command.split(" ", 1)[0].lower() in BLOCKED_VERBS:
            self.history.append((command, False))
            return self._observe(NOT_UNDERSTOOD[0]), 0.0, False, {
                "invalid": True, "admissible": list(self.admissible), "score": self.score}
        observation, _, done, infos = self._engine.step(command)
        ambiguous = observation.startswith(AMBIGUOUS)
        if ambiguous:
            observation, _, done, infos = self._engine.step("0")
        understood = not observation.startswith(NOT_UNDERSTOOD)
        self.history.append((command, understood))
        previous, self.score = self.score, float(infos["score"])
        self.look = infos["look"]
        self.admissible = self._admissible(infos["valid"])
        info: dict[str, Any] = {"invalid": not understood, "admissible": list(self.admissible), "score": self.score}
        if ambiguous:
            info["ambiguous"] = True
        if done:
            info["success"] = self.score > 0  # the engine ends a task on completion (100) or failure (< 0)
        return self._observe(observation), self.score - previous, bool(done), info

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
        self._engine = None
