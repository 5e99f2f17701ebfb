"""End to end on images: 50 MiniGrid episodes -> BC and Q-SFT on the tiny VLM -> 8 evaluation episodes, via the CLI."""

import json
import time

import pytest

from qsft.cli import main

ENV = "minigrid-empty-random-6x6"


@pytest.mark.slow
def test_generate_train_bc_and_qsft_and_evaluate_on_images(tmp_path, capsys):
    start = time.monotonic()
    data = tmp_path / "mg.jsonl"
    assert main(["data", "generate", "--env", ENV, "--episodes", "50", "--seed", "0", "--out", str(data),
                 "--no-progress"]) == 0
    common = ["--data", str(data), "--env", ENV, "--history_turns", "1", "--max_length", "96",
              "--action_tokens", "true", "--model_preset", "micro", "--max_steps", "4",
              "--per_device_train_batch_size", "8", "--save_strategy", "no", "--report_to", "none",
              "--disable_tqdm", "true"]
    assert main(["train", "--algo", "bc", "--out", str(tmp_path / "bc"), *common]) == 0
    assert main(["train", "--algo", "qsft", "--out", str(tmp_path / "qsft"), "--behavior", str(tmp_path / "bc"),
                 "--gamma", "0.9", "--reward_transform", "none", *common]) == 0
    for run in ("bc", "qsft"):
        assert (tmp_path / run / "processor_config.json").is_file()  # how `qsft eval` knows to feed images
        out = tmp_path / run / "results.json"
        assert main(["eval", "--run", str(tmp_path / run), "--episodes", "8", "--batch-size", "8",
                     "--out", str(out)]) == 0
        results = json.loads(out.read_text())
        assert results["config"]["env"] == ENV and len(results["episodes"]) == 8
        assert all(ep["turns"] >= 1 for ep in results["episodes"])
        assert all("image" not in turn for ep in results["episodes"] for turn in ep["transcript"])
    assert json.loads((tmp_path / "qsft" / "qsft.json").read_text())["algo"] == "qsft"
    assert time.monotonic() - start < 180
