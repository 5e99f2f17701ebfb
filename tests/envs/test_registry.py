import subprocess
import sys

import pytest

from qsft.envs import GymTextEnv, TextEnv, list_envs, make, register
from qsft.envs.registry import _REGISTRY
from qsft.errors import EnvError

BUILT_IN = ["chess-endgames", "chess-kq", "chess-kqr", "chess-kr", "chess-krr", "maze", "maze-po", "wordle"]


def test_built_in_envs_declare_what_training_needs():
    assert set(BUILT_IN) <= set(list_envs())
    expected = {  # name: (reward transform, beta, history_turns)
        "maze": ("success", 1.0, 1), "maze-po": ("success", 1.0, None),
        "wordle": ("episode_return:-6:0", 4.0, None), "chess-kq": ("episode_return:-1:1", 8.0, 1),
    }
    for name in BUILT_IN:
        env = make(name)
        assert isinstance(env, TextEnv) and env.name == name and env.action_hint
        assert env.min_return is not None and 0 < env.default_gamma <= 1
        assert env.reset(0).endswith("\n")
        if name in expected:
            assert (env.default_reward_transform, env.default_beta, env.history_turns) == expected[name]


def test_unknown_name_lists_known_envs():
    with pytest.raises(EnvError, match="unknown environment 'mazee'.*maze, maze-po"):
        make("mazee")
    with pytest.raises(EnvError, match="bad arguments"):
        make("maze", size=3)


def test_register_custom_env():
    class Echo(TextEnv):
        name = "echo-test"
        max_turns = 2

        def _reset(self, seed):
            return "say something\n"

        def _step(self, action):
            return f"you said {action}\n", 1.0, action == "bye", {}

    register("echo-test", Echo)
    try:
        env = make("echo-test")
        env.reset(0)
        assert env.step("hi")[1:3] == (1.0, False)
        obs, reward, done, info = env.step("hi")  # turn limit
        assert done and info == {"invalid": False, "truncated": True, "success": False}
        with pytest.raises(EnvError, match="already registered"):
            register("echo-test", Echo)
    finally:
        _REGISTRY.pop("echo-test", None)


class FakeGymTextEnv:
    """Duck-typed gymnasium env: guess the number 3."""

    def reset(self, seed=None):
        self.tries = 0
        return "guess a number", {}

    def step(self, action):
        self.tries += 1
        won = action.strip() == "3"
        invalid = not action.strip().isdigit()
        return ("right" if won else "wrong"), (1.0 if won else 0.0), won, self.tries >= 3, {"invalid": invalid}


def test_gym_adapter_wraps_text_env():
    env = GymTextEnv(FakeGymTextEnv(), name="guess", max_turns=10, min_return=0.0, optimal_return=1.0)
    assert env.reset(1) == "guess a number\n"
    obs, reward, done, info = env.step("x")
    assert (obs, reward, done, info["invalid"]) == ("wrong\n", 0.0, False, True)
    obs, reward, done, info = env.step("3")
    assert (reward, done, info["success"], info["truncated"]) == (1.0, True, True, False)
    env.reset(2)
    env.step("1"), env.step("2")
    obs, reward, done, info = env.step("4")
    assert done and info["truncated"] and not info["success"]
    assert env.optimal_return() == 1.0


def test_gym_adapter_errors():
    image_env = type("Img", (), {"reset": lambda self, seed=None: (b"\x00", {}), "step": lambda self, a: None})
    with pytest.raises(EnvError, match="text observations"):
        GymTextEnv(image_env()).reset(0)
    with pytest.raises(EnvError, match="no step"):
        GymTextEnv(type("Half", (), {"reset": lambda self, seed=None: ("x", {})})())
    try:
        import gymnasium  # noqa: F401
    except ImportError:
        with pytest.raises(EnvError, match="pip install gymnasium"):
            make("gym:TextGame-v0")


def test_envs_package_imports_no_model_code():
    code = ("import sys, qsft.envs, qsft.envs.generate, qsft.envs.chess.policies, qsft.envs.wordle.policies, "
            "qsft.envs.maze.policies; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "sys.exit(str(bad) if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_environment_is_one_folder_that_imports_no_other_environment():
    """Issue #19's layout: envs/<name>/ holds its own code; shared parts live in envs/ itself."""
    import ast
    from pathlib import Path

    import qsft.envs

    root = Path(qsft.envs.__file__).parent
    folders = sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file())
    assert {"maze", "wordle", "chess", "minigrid", "textworld"} <= set(folders)
    for folder in folders:
        for source in (root / folder).glob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for name in names:
                    parts = name.split(".")
                    if parts[:2] == ["qsft", "envs"] and len(parts) > 2 and parts[2] in folders:
                        assert parts[2] == folder, f"{source.relative_to(root)} imports {name}"


def test_registered_entries_name_their_policies_lazily():
    code = ("import sys, qsft.envs; from qsft.envs.registry import list_envs, policies_of; "
            "missing = [n for n in list_envs() if policies_of(n) is None]; "
            "loaded = [m for m in sys.modules if m.startswith('qsft.envs.') and m.count('.') >= 3]; "
            "sys.exit(str((missing, loaded)) if missing or loaded else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
