"""Kill-and-resume: a `qsft train` run SIGKILLed mid-way and resumed with `--resume_from_checkpoint auto`
ends with exactly the weights of an uninterrupted run (CPU, same seed).

The run is killed twice, once while the behavior model trains (in-run SFT, OUT/behavior/checkpoint-N)
and once while the Q-model trains (OUT/checkpoint-N), so both phases resume; the target network
(checkpoint-N/target/) and the finished behavior model (OUT/behavior/qsft.json) must be restored.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from qsft.cli import main
from qsft.data.io import save_episodes
from tests.oracle_chain import random_episodes

REPO = Path(__file__).resolve().parents[2]
BEHAVIOR_STEPS, Q_STEPS = 30, 30


def _args(data: Path, out: Path) -> list[str]:
    # tau 0.2: the target moves a lot per step, so a target restarted from the Q-model on resume
    # (instead of loaded) would change every later Bellman target
    return ["train", "--algo", "qsft", "--data", str(data), "--out", str(out), "--model", "tiny",
            "--model_preset", "micro", "--history_turns", "1", "--max_length", "32", "--reward_transform", "success",
            "--gamma", "0.9", "--max_steps", str(Q_STEPS), "--behavior_max_steps", str(BEHAVIOR_STEPS),
            "--save_steps", "5", "--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--tau", "0.2",
            "--logging_steps", "5", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true",
            "--seed", "7"]


def _start(argv: list[str]) -> subprocess.Popen:
    code = "import sys; from qsft.cli import main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO / "src"))
    return subprocess.Popen([sys.executable, "-c", code, *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_when(process: subprocess.Popen, marker: Path, timeout: float = 240.0) -> None:
    """SIGKILL `process` as soon as `marker` exists (no clean shutdown: like a preempted job)."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"training ended (rc {process.returncode}) before {marker} appeared: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{marker} did not appear within {timeout} s")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def _assert_same_tensors(path_a: Path, path_b: Path) -> None:
    a, b = load_file(str(path_a)), load_file(str(path_b))
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max().item() <= 1e-6, (path_a, name)


def test_killed_twice_and_resumed_run_matches_uninterrupted_run(tmp_path):
    data = tmp_path / "chain.jsonl"
    save_episodes(data, random_episodes(30, seed=0))

    reference = tmp_path / "reference"
    assert main(_args(data, reference)) == 0

    run = tmp_path / "run"
    resume = ["--resume_from_checkpoint", "auto"]
    # 1) killed while the behavior model trains: its checkpoint-10 is complete, the rest is not done
    _kill_when(_start(_args(data, run)), run / "behavior" / "checkpoint-10" / "trainer_state.json")
    assert not (run / "behavior" / "qsft.json").exists()
    # 2) resumed, then killed while the Q-model trains
    _kill_when(_start(_args(data, run) + resume), run / "checkpoint-10" / "trainer_state.json")
    assert (run / "behavior" / "qsft.json").is_file() and not (run / "qsft.json").exists()
    behavior_file = run / "behavior" / "model.safetensors"
    behavior_written = behavior_file.stat().st_mtime_ns
    # 3) resumed to the end
    assert main(_args(data, run) + resume) == 0

    assert behavior_file.stat().st_mtime_ns == behavior_written  # finished behavior model reused, not retrained
    _assert_same_tensors(run / "behavior" / "model.safetensors", reference / "behavior" / "model.safetensors")
    final = f"checkpoint-{Q_STEPS}"
    _assert_same_tensors(run / final / "target" / "model.safetensors",
                         reference / final / "target" / "model.safetensors")
    _assert_same_tensors(run / "model.safetensors", reference / "model.safetensors")
