"""SIGINT saves a complete checkpoint and exits cleanly; the run then resumes (reliability issue)."""

import json
import signal
import subprocess
import sys
import time

from qsft.data.io import save_episodes
from qsft.training.checkpoints import latest_complete_checkpoint
from tests.oracle_chain import random_episodes

ARGS = ["--model", "tiny", "--model_preset", "micro", "--history_turns", "1", "--max_length", "32",
        "--report_to", "none", "--per_device_train_batch_size", "8",
        "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true", "--seed", "0"]


def test_sigint_saves_checkpoint_and_resume_finishes(tmp_path):
    data = tmp_path / "chain.jsonl"
    save_episodes(data, random_episodes(40))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "qsft.cli", "train", "--algo", "bc", "--data", str(data), "--out", str(out),
               "--max_steps", "100000", *ARGS]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    try:
        seen = []
        for line in proc.stdout:  # wait until training is really stepping
            seen.append(line)
            if "'loss'" in line:
                break
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
        output = "".join(seen) + output
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, output
    assert "interrupted at step" in output and "--resume_from_checkpoint auto" in output
    checkpoint = latest_complete_checkpoint(out)
    assert checkpoint is not None
    step = json.loads((__import__("pathlib").Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
    assert step >= 1
    assert not (out / "qsft.json").exists()  # an interrupted run does not pass for a finished one
    done = subprocess.run([sys.executable, "-m", "qsft.cli", "train", "--algo", "bc", "--data", str(data),
                           "--out", str(out), "--max_steps", str(step + 3), "--resume_from_checkpoint", "auto", *ARGS],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "qsft.json").exists()
