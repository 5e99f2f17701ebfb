"""`qsft train --algo bc` then `--algo qsft --behavior DIR`, and `--behavior cotrain`: loadable models."""

import torch

from qsft.cli import main
from qsft.data.io import save_episodes
from qsft.models.loading import build_tiny_model, load_model, load_tokenizer
from qsft.training.run import RunInfo
from tests.oracle_chain import random_episodes

COMMON = ["--model", "tiny", "--model_preset", "micro", "--history_turns", "1", "--max_length", "32",
          "--report_to", "none", "--per_device_train_batch_size", "8", "--max_steps", "6",
          "--save_strategy", "no", "--disable_tqdm", "true"]
QSFT = ["--reward_transform", "success", "--gamma", "0.9"]


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_bc_then_qsft_with_frozen_behavior_dir(tmp_path):
    data = tmp_path / "chain.jsonl"
    save_episodes(data, random_episodes(30))
    bc, q = tmp_path / "bc", tmp_path / "q"
    assert main(["train", "--algo", "bc", "--data", str(data), "--out", str(bc), *COMMON]) == 0
    before = _weights(load_model(bc))
    assert main(["train", "--algo", "qsft", "--data", str(data), "--out", str(q), "--behavior", str(bc),
                 *COMMON, *QSFT]) == 0
    info = RunInfo.load(q)
    assert info.algo == "qsft" and info.behavior_path(q).resolve() == bc.resolve()
    assert torch.equal(_weights(load_model(bc)), before)  # the behavior model stayed frozen
    model, tokenizer = load_model(q), load_tokenizer(q)
    ids = torch.tensor([[tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("p0")]])
    assert model(ids).logits.shape[-1] >= len(tokenizer)


def test_cotrain_trains_both_models_and_saves_the_behavior(tmp_path):
    data = tmp_path / "chain.jsonl"
    save_episodes(data, random_episodes(30))
    out = tmp_path / "co"
    assert main(["train", "--algo", "qsft", "--data", str(data), "--out", str(out), "--behavior", "cotrain",
                 "--q_init", "behavior", *COMMON, *QSFT]) == 0
    info = RunInfo.load(out)
    assert info.behavior_model == "behavior"
    q_model, behavior = load_model(out), load_model(out / "behavior")
    # both started from the same tiny initialisation (seed 42) and both moved, by different losses
    start = _weights(build_tiny_model(load_tokenizer(out), "micro", 64, seed=42))
    assert start.shape == _weights(behavior).shape
    assert not torch.allclose(_weights(behavior), start) and not torch.allclose(_weights(q_model), start)
    assert not torch.equal(_weights(q_model), _weights(behavior))
