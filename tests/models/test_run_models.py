"""`load_run_models` on a full-size Q-SFT run: the Q-model and the behavior model the run saved."""

import torch

from qsft.models.loading import load_model
from qsft.models.run_models import load_run_models
from qsft.training.run import train
from tests.oracle_chain import random_episodes


def test_full_run_gives_the_saved_q_and_behavior_models(tmp_path):
    out = train("qsft", random_episodes(8, seed=0), "tiny", tmp_path / "run",
                {"max_steps": 2, "behavior_max_steps": 2, "per_device_train_batch_size": 8, "save_strategy": "no",
                 "report_to": "none", "use_cpu": True, "model_preset": "micro", "max_length": 32,
                 "history_turns": 1, "reward_transform": "success", "gamma": 0.9, "disable_tqdm": True})
    q_model, behavior = load_run_models(out)
    ids = torch.tensor([[1, 5, 6]])
    with torch.no_grad():
        assert torch.equal(q_model(input_ids=ids).logits, load_model(out)(input_ids=ids).logits)
        assert torch.equal(behavior(input_ids=ids).logits, load_model(out / "behavior")(input_ids=ids).logits)
        assert not torch.allclose(q_model(input_ids=ids).logits, behavior(input_ids=ids).logits)
