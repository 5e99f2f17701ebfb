"""MiniGrid (gymnasium, Farama) as an image navigation environment with text actions.

The observation is the whole grid rendered as a small RGB frame, `tile_size` pixels per cell
(a 6 x 6 grid at 8 px is 48 x 48), returned by `observation_image()`; the text of every observation
is the task's mission ("get to the green goal square"). A full-grid frame shows the agent's cell and
heading, so it is a Markov state: `history_turns = 1` (the model sees the latest frame only).

Actions are text: "turn left", "turn right", "forward" (MiniGrid's actions 0-2; the Empty tasks need
no others). Any other utterance is `invalid`: it spends a step and changes nothing (MiniGrid's no-op
`done` action). Rewards are MiniGrid's own: 0 per step, 1 - 0.9 * steps / max_steps on reaching
the goal (the episode ends, success), so returns already lie in [0, 1] and shorter paths pay more.
The turn limit is MiniGrid's `max_steps`, set per task below to a few times the longest shortest path.

This module uses gymnasium, minigrid and numpy only (no torch); rendering goes through minigrid's
own tile renderer (no display needed).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from qsft.envs.base import StepResult, TextEnv
from qsft.errors import EnvError

ACTIONS = ("turn left", "turn right", "forward")  # MiniGrid action indices 0, 1, 2
NO_OP = 6  # MiniGrid's `done` action: spends a step, changes nothing in these tasks
State = tuple[int, int, int]  # (x, y, heading 0=right 1=down 2=left 3=up)


@dataclass(frozen=True)
class MinigridTask:
    gym_id: str
    max_steps: int


TASKS: dict[str, MinigridTask] = {
    "empty-5x5": MinigridTask("MiniGrid-Empty-5x5-v0", 30),
    "empty-random-5x5": MinigridTask("MiniGrid-Empty-Random-5x5-v0", 30),
    "empty-6x6": MinigridTask("MiniGrid-Empty-6x6-v0", 40),
    "empty-random-6x6": MinigridTask("MiniGrid-Empty-Random-6x6-v0", 40),
    "empty-8x8": MinigridTask("MiniGrid-Empty-8x8-v0", 60),  # 64 x 64 frames at tile_size 8
}


def parse_action(action: str) -> int | None:
    text = " ".join(action.lower().split())
    return ACTIONS.index(text) if text in ACTIONS else None


class MinigridEnv(TextEnv):
    """One MiniGrid task (see TASKS) with full-grid RGB observations and text actions."""

    reward_range = (0.0, 1.0)
    min_return = 0.0  # never reaching the goal
    default_reward_transform = "none"  # MiniGrid's rewards are already in [0, 1]
    default_gamma = 0.9
    default_beta = 1.0
    history_turns = 1
    action_hint = "one of: turn left, turn right, forward"

    def __init__(self, task: str = "empty-random-6x6", tile_size: int = 8, max_turns: int | None = None) -> None:
        super().__init__()
        if task not in TASKS:
            raise EnvError(f"unknown MiniGrid task {task!r}; known: {', '.join(sorted(TASKS))}")
        if not 1 <= tile_size <= 32:
            raise EnvError(f"tile_size must be in [1, 32] pixels, got {tile_size}")
        self.task = TASKS[task]
        self.name = f"minigrid-{task}"
        self.tile_size = tile_size
        self.max_turns = max_turns or self.task.max_steps
        self._env = self._make()
        self._probe = None  # a second env for optimal_return(seed), made on first use
        self.mission = ""

    def _make(self):
        try:
            import gymnasium
            import minigrid  # noqa: F401 - registers the MiniGrid-* ids with gymnasium
        except ImportError as err:
            raise EnvError(f"{self.name} needs the 'minigrid' package (pip install minigrid): {err}") from None
        return gymnasium.make(self.task.gym_id, max_steps=self.max_turns).unwrapped

    # --- state and planning (what the scripted policies read) ---
    @property
    def state(self) -> State:
        x, y = self._env.agent_pos
        return int(x), int(y), int(self._env.agent_dir)

    def distances(self, env=None) -> dict[State, int]:
        """Fewest actions from every reachable (x, y, heading) to the goal, by BFS backwards from it."""
        env = env or self._env
        grid = env.grid
        free = {(x, y) for x in range(grid.width) for y in range(grid.height)
                if grid.get(x, y) is None or grid.get(x, y).can_overlap()}
        goals = {(x, y) for (x, y) in free if grid.get(x, y) is not None and grid.get(x, y).type == "goal"}
        # predecessors: turning is reversible; "forward" into (x, y) heading d came from (x, y) - step(d)
        distance: dict[State, int] = {}
        queue: deque[State] = deque()
        for gx, gy in goals:
            for d in range(4):
                px, py = gx - _STEP[d][0], gy - _STEP[d][1]
                if (px, py) in free and (px, py) not in goals and (px, py, d) not in distance:
                    distance[(px, py, d)] = 1
                    queue.append((px, py, d))
        while queue:
            x, y, d = queue.popleft()
            here = distance[(x, y, d)]
            previous = [(x, y, (d + 1) % 4), (x, y, (d - 1) % 4)]
            px, py = x - _STEP[d][0], y - _STEP[d][1]
            if (px, py) in free and (px, py) not in goals:
                previous.append((px, py, d))
            for state in previous:
                if state not in distance:
                    distance[state] = here + 1
                    queue.append(state)
        return distance

    def optimal_actions(self) -> list[str]:
        """Every action on a shortest path to the goal from the current state."""
        distance = self.distances()
        here = distance.get(self.state)
        if here is None:
            raise EnvError(f"{self.name}: the goal is unreachable from {self.state}")
        x, y, d = self.state
        nexts = {"turn left": (x, y, (d - 1) % 4), "turn right": (x, y, (d + 1) % 4)}
        fx, fy = x + _STEP[d][0], y + _STEP[d][1]
        cell = self._env.grid.get(fx, fy)
        if cell is not None and cell.type == "goal":
            return ["forward"]
        if cell is None or cell.can_overlap():
            nexts["forward"] = (fx, fy, d)
        return [a for a in ACTIONS if a in nexts and distance.get(nexts[a]) == here - 1]

    def optimal_return(self, seed: int | None = None) -> float:
        """1 - 0.9 * d / max_steps for a start d actions from the goal."""
        if seed is None:
            env, state = self._env, self._start
        else:
            if self._probe is None:
                self._probe = self._make()
            self._probe.reset(seed=seed)
            env = self._probe
            state = (int(env.agent_pos[0]), int(env.agent_pos[1]), int(env.agent_dir))
        steps = self.distances(env).get(state)
        return 0.0 if steps is None else 1.0 - 0.9 * steps / self.max_turns

    # --- the text-env protocol ---
    def observation_image(self) -> np.ndarray:
        """The full grid as RGB [H, W, 3] uint8, `tile_size` pixels per cell."""
        return self._env.get_frame(highlight=False, tile_size=self.tile_size, agent_pov=False)

    def _text(self) -> str:
        return f"{self.mission}\n"

    def _reset(self, seed: int | None) -> str:
        self._env.reset(seed=seed)
        self.mission = str(self._env.mission)
        self._start = self.state
        return self._text()

    def _step(self, action: str) -> StepResult:
        index = parse_action(action)
        _, reward, terminated, _, _ = self._env.step(NO_OP if index is None else index)
        info = {"invalid": index is None}
        if terminated:
            info["success"] = reward > 0
            info["truncated"] = False
        return self._text(), float(reward), bool(terminated), info

    def close(self) -> None:
        for env in (self._env, self._probe):
            if env is not None:
                env.close()


_STEP = ((1, 0), (0, 1), (-1, 0), (0, -1))  # MiniGrid's DIR_TO_VEC: right, down, left, up
