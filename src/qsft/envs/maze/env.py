"""Maze navigation in the manner of LMRL-Gym (fully and partially observed).

The layout is LMRL-Gym's "double T" maze: a 10 x 13 grid with 26 free cells, the goal at the
bottom of the stem. Positions are (row, column), row 0 at the top. The fully observed text is

    The goal is at position 8, 6. Your current position is at position 1, 1. There are walls to your left, above you, below you.

(numbers are written digit by digit with spaces, "1 0" for 10, as LMRL-Gym does so that
sub-word tokenizers see one digit per token). The partially observed variant (`maze-po`) gives
only the wall sentence; the position must be inferred from the history.

Rewards (LMRL-Gym's `standard_reward`): -1 per move (bumping into a wall is a legal move that
leaves the position unchanged), 0 on the move that reaches the goal (the episode ends,
success), -4 for an utterance that is not one of the four moves (position unchanged,
`invalid`). At most 100 moves.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from qsft.envs.base import StepResult, TextEnv

Cell = tuple[int, int]

# '#' wall, '.' free, 'G' goal (free). Copied in shape from LMRL-Gym's double_t_maze.
DOUBLE_T_MAZE = (
    "#############",
    "#.....#.....#",
    "###.#####.###",
    "###.#####.###",
    "###.#####.###",
    "###.......###",
    "######.######",
    "######.######",
    "######G######",
    "#############",
)

# Action texts and their (row, column) offsets.
MOVES: dict[str, Cell] = {"move up": (-1, 0), "move down": (1, 0), "move left": (0, -1), "move right": (0, 1)}
# Wall sentence order as in LMRL-Gym: right, left, above, below.
WALL_DIRECTIONS: tuple[tuple[str, Cell], ...] = (
    ("to your right", (0, 1)), ("to your left", (0, -1)), ("above you", (-1, 0)), ("below you", (1, 0)),
)


def parse_move(action: str) -> str | None:
    """Canonical move text ("move up", ...) or None; case and extra whitespace are forgiven."""
    text = " ".join(action.lower().split())
    return text if text in MOVES else None


@dataclass(frozen=True)
class MazeLayout:
    """A grid of walls and free cells with one goal, plus its BFS solution."""

    rows: tuple[str, ...]
    goal: Cell = field(init=False)
    free_cells: tuple[Cell, ...] = field(init=False)
    # Shortest number of moves from each free cell to the goal.
    distance: dict[Cell, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cells = [(r, c) for r, row in enumerate(self.rows) for c, ch in enumerate(row) if ch in ".G"]
        goals = [(r, c) for r, row in enumerate(self.rows) for c, ch in enumerate(row) if ch == "G"]
        if len(goals) != 1:
            raise ValueError(f"a maze layout needs exactly one goal 'G', found {len(goals)}")
        object.__setattr__(self, "goal", goals[0])
        object.__setattr__(self, "free_cells", tuple(cells))
        object.__setattr__(self, "distance", self._bfs_from_goal())

    def is_free(self, cell: Cell) -> bool:
        r, c = cell
        return 0 <= r < len(self.rows) and 0 <= c < len(self.rows[r]) and self.rows[r][c] in ".G"

    def move(self, cell: Cell, move: str) -> Cell:
        """Where `move` leads from `cell` (the same cell when a wall is in the way)."""
        dr, dc = MOVES[move]
        target = (cell[0] + dr, cell[1] + dc)
        return target if self.is_free(target) else cell

    def walls_around(self, cell: Cell) -> list[str]:
        return [name for name, (dr, dc) in WALL_DIRECTIONS if not self.is_free((cell[0] + dr, cell[1] + dc))]

    @property
    def start_cells(self) -> tuple[Cell, ...]:
        return tuple(cell for cell in self.free_cells if cell != self.goal)

    def _bfs_from_goal(self) -> dict[Cell, int]:
        distance = {self.goal: 0}
        queue = deque([self.goal])
        while queue:
            cell = queue.popleft()
            for move in MOVES:
                neighbour = self.move(cell, move)
                if neighbour not in distance:
                    distance[neighbour] = distance[cell] + 1
                    queue.append(neighbour)
        unreachable = set(self.free_cells) - set(distance)
        if unreachable:
            raise ValueError(f"maze cells cannot reach the goal: {sorted(unreachable)}")
        return distance

    def optimal_moves(self, cell: Cell) -> list[str]:
        """Every move on a shortest path from `cell` to the goal (in MOVES order)."""
        here = self.distance[cell]
        return [m for m in MOVES if self.distance[self.move(cell, m)] == here - 1]

    def optimal_return(self, cell: Cell) -> float:
        """-1 per move except the last, which pays 0: -(d - 1) for a start d moves away."""
        return -float(max(self.distance[cell] - 1, 0))


def _spaced_number(value: int) -> str:
    return " ".join(str(value))


def describe_walls(walls: list[str]) -> str:
    if not walls:
        return "There are no walls near you."
    if len(walls) == 1:
        return f"There is a wall {walls[0]}."
    return f"There are walls {', '.join(walls)}."


class MazeEnv(TextEnv):
    """LMRL-Gym maze; `partially_observed=True` hides the goal and position (`maze-po`)."""

    reward_range = (-4.0, 0.0)
    # A policy that moves legally for all 100 turns without reaching the goal (LMRL-Gym uses the
    # same anchor); spamming invalid text (-4 each) scores below it.
    min_return = -100.0
    # Pay 1 on reaching the goal: with gamma < 1 a shorter path is worth more (see data/rewards.py).
    default_reward_transform = "success"
    # 0.95 rather than 0.99: path lengths of 5 vs 9 moves then differ by ~20% in value, not ~4%.
    default_gamma = 0.95
    default_beta = 1.0
    action_hint = "one of: move up, move down, move left, move right"

    UNPARSEABLE_REWARD = -4.0
    STEP_REWARD = -1.0
    GOAL_REWARD = 0.0

    def __init__(self, partially_observed: bool = False, max_turns: int = 100,
                 layout: tuple[str, ...] = DOUBLE_T_MAZE) -> None:
        super().__init__()
        self.partially_observed = partially_observed
        self.name = "maze-po" if partially_observed else "maze"
        # Fully observed: the current observation is a Markov state. Partially observed: it is not.
        self.history_turns = None if partially_observed else 1
        self.max_turns = max_turns
        self.layout = MazeLayout(layout)
        self.start: Cell = self.layout.start_cells[0]
        self.position: Cell = self.start

    def start_for_seed(self, seed: int | None) -> Cell:
        return random.Random(seed).choice(self.layout.start_cells)

    def describe(self) -> str:
        walls = describe_walls(self.layout.walls_around(self.position))
        if self.partially_observed:
            return walls + "\n"
        goal, here = self.layout.goal, self.position
        return (f"The goal is at position {_spaced_number(goal[0])}, {_spaced_number(goal[1])}. "
                f"Your current position is at position {_spaced_number(here[0])}, {_spaced_number(here[1])}. "
                f"{walls}\n")

    def optimal_moves(self) -> list[str]:
        return self.layout.optimal_moves(self.position)

    def optimal_return(self, seed: int | None = None) -> float:
        start = self.start if seed is None else self.start_for_seed(seed)
        return self.layout.optimal_return(start)

    def _reset(self, seed: int | None) -> str:
        self.start = self.position = self.start_for_seed(seed)
        return self.describe()

    def _step(self, action: str) -> StepResult:
        move = parse_move(action)
        if move is None:
            return self.describe(), self.UNPARSEABLE_REWARD, False, {"invalid": True}
        self.position = self.layout.move(self.position, move)
        if self.position == self.layout.goal:
            return self.describe(), self.GOAL_REWARD, True, {"invalid": False, "success": True}
        return self.describe(), self.STEP_REWARD, False, {"invalid": False}
