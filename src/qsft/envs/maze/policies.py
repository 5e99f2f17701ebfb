"""Scripted maze policies, including LMRL-Gym-style behavior data (`lmrl`, the default).

`lmrl[:P]` follows the recipe LMRL-Gym describes for its maze data: the maze is split into
symmetric sub-mazes (the two T-arms and the central corridor with the goal stem, overlapping at
the two junctions). Each episode is confined to one region containing its start: a move that
would leave the region is replaced by a random move that stays inside. Each turn the policy
takes a greedy step toward the region's waypoint (the junction of an arm, the goal in the
centre) with probability P (default 0.3), else a random move.

Why: only episodes that start in the central region can reach the goal, so most trajectories
fail (about 30% succeed) and behavior cloning learns a slow random walk; yet from every
cell the data holds the shortest-path move (arms are walked to their junction, the centre to
the goal), so a Q-learner can stitch arm segments to central successes and beat cloning.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from qsft.envs.base import TextEnv
from qsft.envs.maze.env import DOUBLE_T_MAZE, MOVES, Cell, MazeEnv
from qsft.envs.policies import Policy, PolicyFamily, parse_probability
from qsft.errors import EnvError

MOVE_NAMES = tuple(MOVES)


def _maze(env: TextEnv) -> MazeEnv:
    if not isinstance(env, MazeEnv):
        raise EnvError(f"maze policies need a MazeEnv, got {type(env).__name__}")
    return env


@dataclass(frozen=True)
class Region:
    name: str
    cells: frozenset[Cell]
    waypoint: Cell


def _cells(*spans: tuple[int, range] | tuple[range, int]) -> frozenset[Cell]:
    out: set[Cell] = set()
    for rows, cols in spans:
        for r in (rows if isinstance(rows, range) else [rows]):
            for c in (cols if isinstance(cols, range) else [cols]):
                out.add((r, c))
    return frozenset(out)


# Sub-mazes of the double T (see maze.DOUBLE_T_MAZE); the junctions (5, 3) and (5, 9) belong to
# an arm and to the centre, which is where trajectories can be stitched.
DOUBLE_T_REGIONS = (
    Region("left arm", _cells((1, range(1, 6)), (range(2, 6), 3)), waypoint=(5, 3)),
    Region("right arm", _cells((1, range(7, 12)), (range(2, 6), 9)), waypoint=(5, 9)),
    Region("centre", _cells((5, range(3, 10)), (range(6, 9), 6)), waypoint=(8, 6)),
)


class MazeOptimalPolicy(Policy):
    """A shortest-path move (BFS), ties broken at random."""

    def act(self, env: TextEnv, rng: random.Random) -> str:
        return rng.choice(_maze(env).optimal_moves())


class MazeRandomPolicy(Policy):
    """One of the four moves, uniformly (walls included)."""

    def act(self, env: TextEnv, rng: random.Random) -> str:
        return rng.choice(MOVE_NAMES)


@dataclass
class MazeRegionPolicy(Policy):
    """LMRL-Gym-style behavior: confined to one region, greedy toward its waypoint with prob `p_greedy`."""

    p_greedy: float = 0.3
    regions: tuple[Region, ...] = DOUBLE_T_REGIONS
    region: Region | None = field(default=None, init=False)

    def begin_episode(self, env: TextEnv, rng: random.Random) -> None:
        maze = _maze(env)
        if maze.layout.rows != DOUBLE_T_MAZE and self.regions is DOUBLE_T_REGIONS:
            raise EnvError("the 'lmrl' maze policy defines regions for the double-T layout only")
        choices = [region for region in self.regions if maze.position in region.cells]
        if not choices:
            raise EnvError(f"maze start {maze.position} lies in no region of the 'lmrl' policy")
        self.region = rng.choice(choices)

    def act(self, env: TextEnv, rng: random.Random) -> str:
        maze, region = _maze(env), self.region
        if region is None:
            raise EnvError("MazeRegionPolicy.act called before begin_episode")
        here = maze.position
        # A move "stays" when it ends inside the region (bumping into a wall stays where it is).
        staying = [m for m in MOVE_NAMES if maze.layout.move(here, m) in region.cells]
        if rng.random() < self.p_greedy:
            greedy = [m for m in staying if _manhattan(maze.layout.move(here, m), region.waypoint)
                      < _manhattan(here, region.waypoint)]
            if greedy:
                return rng.choice(greedy)
        move = rng.choice(MOVE_NAMES)
        return move if move in staying else rng.choice(staying)

    @property
    def label(self) -> str:
        return self.region.name if self.region else "region"


def _manhattan(a: Cell, b: Cell) -> int:
    return abs(a[0] - b[0]) + abs(a[1] - b[1])


def _lmrl(arg: float | None) -> Policy:
    return MazeRegionPolicy(p_greedy=parse_probability("lmrl", arg, default=0.3))


MAZE_POLICIES = PolicyFamily(
    optimal=MazeOptimalPolicy,
    random=MazeRandomPolicy,
    good=MazeOptimalPolicy,
    poor=MazeRandomPolicy,
    default_spec="lmrl",
    extra={"lmrl": _lmrl},
    extra_help={"lmrl": "lmrl[:P]"},
)
