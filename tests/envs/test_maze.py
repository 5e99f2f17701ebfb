import pytest

from qsft.envs import make
from qsft.envs.maze.env import DOUBLE_T_MAZE, MOVES, MazeEnv, MazeLayout, parse_move


def test_observation_text_matches_lmrl_gym():
    env = make("maze")
    env.reset(0)
    env.position = (1, 1)
    assert env.describe() == ("The goal is at position 8, 6. Your current position is at position 1, 1. "
                              "There are walls to your left, above you, below you.\n")
    env.position = (1, 11)  # two-digit numbers are spelled digit by digit, as in LMRL-Gym
    assert "position 1, 1 1." in env.describe()
    env.position = (5, 6)
    assert env.describe().endswith("There is a wall above you.\n")


def test_partially_observed_gives_only_walls():
    env = make("maze-po")
    assert env.history_turns is None and make("maze").history_turns == 1
    env.reset(0)
    env.position = (1, 1)
    assert env.describe() == "There are walls to your left, above you, below you.\n"


def test_layout_size_goal_and_walls():
    layout = MazeLayout(DOUBLE_T_MAZE)
    assert (len(DOUBLE_T_MAZE), len(DOUBLE_T_MAZE[0])) == (10, 13)
    assert len(layout.free_cells) == 26 and layout.goal == (8, 6)
    assert layout.move((1, 1), "move left") == (1, 1)  # wall: stays
    assert layout.move((1, 1), "move right") == (1, 2)


def test_rewards_goal_wall_and_invalid_action():
    env = make("maze")
    env.reset(0)
    env.position = (1, 1)
    obs, reward, done, info = env.step("move up")  # into a wall: a legal move, -1
    assert (reward, done, info["invalid"], env.position) == (-1.0, False, False, (1, 1))
    obs, reward, done, info = env.step("jump")
    assert (reward, done, info["invalid"], env.position) == (-4.0, False, True, (1, 1))
    assert obs.endswith("\n")
    env.position = (7, 6)
    obs, reward, done, info = env.step("  Move   DOWN ")
    assert (reward, done, info["success"], info["truncated"]) == (0.0, True, True, False)


def test_turn_limit_truncates():
    env = MazeEnv(max_turns=3)
    env.reset(0)
    env.position = (1, 1)
    results = [env.step("move up") for _ in range(3)]
    assert [r[2] for r in results] == [False, False, True]
    assert results[-1][3]["truncated"] is True and results[-1][3]["success"] is False
    with pytest.raises(Exception, match="reset"):
        env.step("move up")


def test_parse_move_is_lenient_only_about_case_and_spaces():
    assert parse_move("MOVE Left") == "move left"
    assert parse_move("move\tup ") == "move up"
    assert parse_move("left") is None and parse_move("move upp") is None


def test_bfs_solver_reaches_goal_with_optimal_return_from_every_start():
    env = make("maze")
    layout = env.layout
    for start in layout.start_cells:
        env.reset(0)
        env.start = env.position = start
        total, done = 0.0, False
        while not done:
            _, reward, done, info = env.step(layout.optimal_moves(env.position)[0])
            total += reward
        assert info["success"] and total == env.optimal_return() == -(layout.distance[start] - 1)
    assert max(layout.distance.values()) == 12  # a corner of an arm: 2 + 4 + 3 + 3 moves


def test_optimal_moves_shorten_distance_and_reset_is_deterministic():
    layout = MazeLayout(DOUBLE_T_MAZE)
    for cell in layout.start_cells:
        for move in layout.optimal_moves(cell):
            assert move in MOVES and layout.distance[layout.move(cell, move)] == layout.distance[cell] - 1
    env = make("maze")
    starts = [env.reset(seed) for seed in range(20)]
    assert starts == [env.reset(seed) for seed in range(20)]
    assert len(set(starts)) > 5
    assert env.optimal_return(7) == layout.optimal_return(env.start_for_seed(7))
