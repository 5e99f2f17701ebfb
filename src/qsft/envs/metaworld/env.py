"""Meta-World robot manipulation as text environments (`metaworld-pick-place`, `metaworld-push`, `metaworld-reach`).

Meta-World (Yu et al. 2019; Farama's `metaworld` 3.x on PyPI, `pip install 'qsft[robotics]'`) simulates a
Sawyer arm in MuJoCo (bundled in the `mujoco` wheel: no display, no downloads). Its continuous action is 4-D:
a hand displacement (dx, dy, dz in [-1, 1], 1 cm of the arm's mocap target per simulator step) and a gripper
command (> 0 closes, <= 0 opens). Here the agent speaks one of eight text actions, each a fixed action held
for a fixed number of simulator steps:

* `move x+`, `move x-`, `move y+`, `move y-`, `move z+`, `move z-`: full speed along one axis for 2 steps (the
  hand's target moves 2 cm), then 2 steps holding still so that most of the move shows in the next
  observation (the hand trails its target: by 0.5-1.2 cm after a move, the rest follows during the next turn;
  without the pause the scripted expert won 36/40 and 38/40 seeds of pick-place and push instead of 40/40);
* `close gripper`, `open gripper`: the gripper command for 12 steps, about the time the fingers take to close
  on a puck (with 4 steps they had barely started). The command is latched: moves keep it, so the arm
  carries what it holds.

2 cm steps leave the hand within 1 cm of any target along each axis, finer than the tasks need (Meta-World's
success radii are 5-7 cm; the fingers hold a puck that is up to ~2 cm off centre), and the scripted expert
finishes in 17-31 turns on average, 49 at most (`TASKS`). Any other utterance is `invalid`: the arm holds still
for as long as a move takes (4 steps).

Observation text (`history_turns = 1`: it is the whole state the policy needs), positions in metres rounded
to the centimetre, "hand" being the point between the fingertips (Meta-World's `tcp_center`: a hand at the
puck's position can grasp it):

    hand 0.00 0.60 0.15 | gripper open | puck 0.00 0.62 0.02 | goal -0.08 0.84 0.18

(`metaworld-reach` has no object in the text). The goal is always shown: Meta-World's goal-observable (MT1)
observations, not its goal-hidden meta-learning ones.

Tasks, starts and seeds: `reset(seed)` places the object and the goal with Meta-World's own task sampling
(`seeded_rand_vec`: the environment's generator seeded with `seed` draws the task vector), so each seed is one
start/goal configuration, the same in every process. Object x in [-0.1, 0.1] m, y in [0.6, 0.7]; goal y in
[0.8, 0.9] (heights: `TASKS`).

Rewards and score: Meta-World's `info["success"]` (pick-place and push: the object within 7 / 5 cm of the goal,
reach: the hand within 5 cm), read after every simulator step. The first success ends the episode with reward 1
(`info["success"]`); every other turn pays 0, and `max_turns` truncates. The return is the paper's score,
success 1/0; with `gamma` < 1 shorter solutions are worth more (as maze). Rewards already lie in [0, 1]:
`reward_transform: none`. Meta-World's shaped reward (0..10) of the turn's last simulator step is in
`info["sim_reward"]` for reference. Normalised score: 0 = the random policy's success rate (measured, `TASKS`),
100 = success on every start (`optimal_return` 1.0; the scripted expert reaches it on every measured seed).

This module imports numpy and, on first use, metaworld (no torch).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from qsft.envs.base import StepResult, TextEnv
from qsft.errors import ConfigError, EnvError

MOVES = {"move x+": (0, 1.0), "move x-": (0, -1.0), "move y+": (1, 1.0), "move y-": (1, -1.0),
         "move z+": (2, 1.0), "move z-": (2, -1.0)}  # action: (axis, direction)
GRIPPER = {"close gripper": True, "open gripper": False}  # action: closed afterwards
ACTIONS = (*MOVES, *GRIPPER)
MOVE_STEPS = 2  # simulator steps at full speed (1 cm each: Meta-World's action_scale)
SETTLE_STEPS = 2  # simulator steps holding still after a move
GRIPPER_STEPS = 12  # simulator steps of a gripper command: the fingers take ~12 to close on a puck
STEP_SIZE = 0.01 * MOVE_STEPS  # metres a move shifts the hand's target
CLOSED, OPEN = 1.0, -1.0  # Meta-World's gripper commands


@dataclass(frozen=True)
class MetaWorldTask:
    """One registered Meta-World task and its episode constants."""

    env_name: str  # Meta-World's name
    object_name: str | None  # what the observation text calls the object (None: not shown)
    grasp: bool  # the expert grasps the object (pick-place, push) or only moves the hand (reach)
    max_turns: int  # about twice the expert's longest episode
    # Success rate of the `random` policy (uniform over ACTIONS) within max_turns: the normalised score's 0.
    min_return: float
    # The default P of `half-competent[:P]`, chosen so that a minority of its episodes win (LMRL-Gym's shape).
    half_competent: float


# Measured on seeds 0-99 (policy seed = start seed): the scripted expert's successes and turns mean / max;
# `random`, default `half-competent`, `epsilon:0.3` and `epsilon:0.5` successes. Goal heights: pick-place and
# reach 0.05-0.3 m, push on the table.
TASKS: dict[str, MetaWorldTask] = {
    # expert 100/100, 31.4 / 49 turns; random 0/100; half-competent 46/100; epsilon 0.3: 82/100, 0.5: 31/100
    "pick-place": MetaWorldTask("pick-place-v3", "puck", grasp=True, max_turns=100, min_return=0.0,
                                half_competent=0.7),
    # expert 100/100, 27.7 / 38 turns; random 0/100; half-competent 45/100; epsilon 0.3: 99/100, 0.5: 61/100
    "push": MetaWorldTask("push-v3", "puck", grasp=True, max_turns=100, min_return=0.0, half_competent=0.7),
    # expert 100/100, 16.9 / 26 turns; random 0/100; half-competent 44/100; epsilon 0.3: 100/100, 0.5: 94/100
    "reach": MetaWorldTask("reach-v3", None, grasp=False, max_turns=50, min_return=0.0, half_competent=0.4),
}


def parse_action(action: str) -> str | None:
    text = " ".join(action.lower().split())
    return text if text in ACTIONS else None


def position_text(position: np.ndarray) -> str:
    return " ".join(f"{round(float(v), 2) + 0.0:.2f}" for v in position)  # + 0.0: no "-0.00"


class MetaWorldEnv(TextEnv):
    """One Meta-World task (see TASKS) with text observations and eight discrete text actions."""

    reward_range = (0.0, 1.0)
    default_reward_transform = "none"  # 1 on success, else 0: already in [0, 1]
    default_gamma = 0.95
    default_beta = 1.0
    history_turns = 1
    action_hint = "one of: " + ", ".join(ACTIONS)
    admissible = ACTIONS  # every action is accepted in every state (read by the shared gold-path policies)

    def __init__(self, task: str = "pick-place", max_turns: int | None = None) -> None:
        super().__init__()
        if task not in TASKS:
            raise ConfigError(f"unknown Meta-World task {task!r}; use one of {', '.join(TASKS)}")
        self.task = TASKS[task]
        self.name = f"metaworld-{task}"
        self.max_turns = self.task.max_turns if max_turns is None else int(max_turns)
        self.min_return = self.task.min_return
        self._sim = self._make()
        self._observation = np.zeros(39)  # Meta-World's observation after the latest simulator step
        self.gripper_closed = False

    def _make(self):
        try:
            from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
        except ImportError as err:
            raise EnvError(f"{self.name} needs the `metaworld` package: pip install 'qsft[robotics]' "
                           f"(or ./scripts/setup.sh): {err}") from None
        # seed=0: construction then leaves numpy's global generator alone (Meta-World restores it)
        sim = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{self.task.env_name}-goal-observable"](seed=0)
        sim.max_path_length = 2**62  # Meta-World's 500-step limit would raise; `max_turns` ends episodes
        return sim

    # --- state (what the scripted policies read) ---
    @property
    def hand(self) -> np.ndarray:
        """The point between the fingertips (Meta-World's `tcp_center`), metres."""
        return np.array(self._sim.tcp_center, dtype=float)

    @property
    def object_position(self) -> np.ndarray:
        return self._observation[4:7].copy()

    @property
    def goal(self) -> np.ndarray:
        return self._observation[-3:].copy()

    def optimal_return(self, seed: int | None = None) -> float:
        return 1.0  # success is reachable from every start (the expert succeeds on every measured seed)

    # --- the text-env protocol ---
    def _text(self) -> str:
        parts = [f"hand {position_text(self.hand)}", f"gripper {'closed' if self.gripper_closed else 'open'}"]
        if self.task.object_name:
            parts.append(f"{self.task.object_name} {position_text(self.object_position)}")
        parts.append(f"goal {position_text(self.goal)}")
        return " | ".join(parts) + "\n"

    def _reset(self, seed: int | None) -> str:
        sim = self._sim
        sim._freeze_rand_vec = False  # draw the task vector anew on each reset ...
        sim.seeded_rand_vec = True  # ... from the environment's own generator, seeded here
        sim.seed(random.randrange(2**31) if seed is None else seed)
        self._observation, _ = sim.reset()
        self.gripper_closed = False  # Meta-World's reset opens the gripper
        return self._text()

    def _simulate(self, action: np.ndarray, steps: int) -> tuple[bool, float]:
        """Run `steps` simulator steps of `action`; (success seen, shaped reward of the last step run)."""
        sim_reward = 0.0
        for _ in range(steps):
            self._observation, sim_reward, _, _, info = self._sim.step(action)
            if info["success"]:
                return True, float(sim_reward)
        return False, float(sim_reward)

    def _step(self, action: str) -> StepResult:
        text = parse_action(action)
        if text in GRIPPER:
            self.gripper_closed = GRIPPER[text]
        grip = CLOSED if self.gripper_closed else OPEN
        hold = np.array([0.0, 0.0, 0.0, grip])
        if text in MOVES:
            axis, direction = MOVES[text]
            move = hold.copy()
            move[axis] = direction
            success, sim_reward = self._simulate(move, MOVE_STEPS)
            if not success:
                success, sim_reward = self._simulate(hold, SETTLE_STEPS)
        elif text in GRIPPER:
            success, sim_reward = self._simulate(hold, GRIPPER_STEPS)
        else:  # invalid text: the arm holds still for as long as a move takes
            success, sim_reward = self._simulate(hold, MOVE_STEPS + SETTLE_STEPS)
        info: dict[str, Any] = {"invalid": text is None, "sim_reward": sim_reward}
        if success:
            info["success"] = True
            info["truncated"] = False
        return self._text(), float(success), success, info

    def close(self) -> None:
        if self._sim is not None:
            self._sim.close()
        self._sim = None
