"""Scripted Meta-World policies: a hand-written expert in the text action space, random, and their mixtures.

* `optimal`            the expert (`expert_step`), reading the true state: move the hand above the object,
                       lower it, close the gripper, carry the object to the goal, one axis at a time (the
                       largest remaining error first), 2 cm per move; reach moves the hand to the goal.
                       It succeeds on 100 of 100 seeds of each task (seeds 0-99, `env.TASKS`).
* `random`             one of the eight actions, uniformly;
* `epsilon:P`, `mixture:P` as for every environment (good = optimal, poor = random);
* `half-competent[:P]` the default, after LMRL-Gym's Text-Nav data (as twx-*): each phase of the task
                       (approach, grasp, carry) the arm enters is "known" with probability P (default: the
                       task's `half_competent`, drawn once per phase and episode); the expert acts in known
                       phases, random actions elsewhere. The expert's moves of every phase are in the data,
                       while most episodes stall in a phase they do not know.

Why not Meta-World's own scripted policies (`metaworld.policies.SawyerPickPlaceV3Policy`, ...), each
continuous action mapped onto the nearest text action (a change of its gripper command first, else a move
along the axis of its largest displacement when that exceeds half a step, else a wait)? Measured on seeds
0-19: pick-place 20/20, reach 20/20, but push 2/20: its policy closes the gripper while lowering the hand,
which one action at a time turns into closed fingers landing on the puck (moving before changing the
gripper: pick-place 17/20, push 1/20). The expert below wins 20/20 of the same seeds on each task, and
100/100 on seeds 0-99.
"""

from __future__ import annotations

import numpy as np

from qsft.envs.base import TextEnv
from qsft.envs.gold_path import gold_path_family
from qsft.envs.metaworld.env import STEP_SIZE, MetaWorldEnv

__all__ = ["METAWORLD_POLICIES", "expert_action", "expert_step", "phase"]

CLEARANCE = 0.04  # the hand moves sideways only this far above the object, so as not to knock it over
ALIGNED = 0.02  # a lowered hand counts as above the object within this (no up-and-down loop near the edge)
HOLDING = 0.03  # a held object is within this of the hand along every axis


def _toward(hand: np.ndarray, target: np.ndarray, otherwise: str) -> str:
    """The move along the axis of the largest error, if a step shortens it; else `otherwise`."""
    error = target - hand
    axis = int(np.argmax(np.abs(error)))
    if abs(error[axis]) <= STEP_SIZE / 2:
        return otherwise
    return f"move {'xyz'[axis]}{'+' if error[axis] > 0 else '-'}"


def expert_step(env: MetaWorldEnv) -> tuple[str, str]:
    """(phase, action) of the expert in the current state."""
    hand, goal = env.hand, env.goal
    keep = "close gripper" if env.gripper_closed else "open gripper"  # changes nothing: waits
    if not env.task.grasp:
        return "approach", _toward(hand, goal, keep)
    puck = env.object_position
    off = float(np.abs(hand[:2] - puck[:2]).max())
    if env.gripper_closed:
        if off < HOLDING and abs(hand[2] - puck[2]) < HOLDING:
            return "carry", _toward(hand, goal, keep)
        return "approach", "open gripper"  # closed on nothing, or the object slipped: start over
    low = hand[2] < puck[2] + CLEARANCE
    if off > STEP_SIZE / 2 and not (low and off <= ALIGNED):
        if low:
            return "approach", "move z+"
        return "approach", _toward(hand, np.array([puck[0], puck[1], hand[2]]), keep)
    if hand[2] - puck[2] > STEP_SIZE / 2:
        return "grasp", "move z-"
    return "grasp", "close gripper"


def expert_action(env: TextEnv) -> str:
    return expert_step(env)[1]


def phase(env: TextEnv) -> str:
    return expert_step(env)[0]


METAWORLD_POLICIES = gold_path_family(MetaWorldEnv, expert_action, region=phase)
