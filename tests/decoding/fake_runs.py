"""Untrained runs saved exactly like `train()` saves them, for loading and scoring tests."""

from __future__ import annotations

from pathlib import Path

from qsft.data.tiny_tokenizer import build_tiny_tokenizer
from qsft.models.loading import build_tiny_model
from qsft.training.run import RunInfo

TEXTS = ["look at the door", "open door", "the door opens", "wait"]


def fake_qsft_run(path: Path, history_turns: int | None = None):
    """Q-model in `path`, behavior model in `path/behavior`; returns (tokenizer, q_model, behavior)."""
    tokenizer = build_tiny_tokenizer(TEXTS)
    q_model, behavior = build_tiny_model(tokenizer, "micro", seed=1), build_tiny_model(tokenizer, "micro", seed=2)
    q_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    behavior.save_pretrained(path / "behavior")
    RunInfo(algo="qsft", behavior_model="behavior", gamma=0.9, history_turns=history_turns, max_length=64,
            support_threshold=1e-3, dummy_token_id=tokenizer.convert_tokens_to_ids("[DUMMY]")).save(path)
    return tokenizer, q_model.eval(), behavior.eval()


def fake_single_model_run(path: Path, algo: str = "bc"):
    tokenizer = build_tiny_tokenizer(TEXTS)
    model = build_tiny_model(tokenizer, "micro", seed=3)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    RunInfo(algo=algo, max_length=64).save(path)
    return tokenizer, model.eval()
