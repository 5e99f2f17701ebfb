"""Numerical guards and config validation (reliability issue)."""

import pytest

from qsft.errors import ConfigError, NumericalError
from qsft.training.run import make_config, train
from tests.oracle_chain import random_episodes


@pytest.mark.parametrize("algo,overrides,pattern", [
    ("qsft", {"gamma": 0.0}, r"gamma must be in \(0, 1\]"),
    ("qsft", {"gamma": 1.5}, r"gamma must be in \(0, 1\]"),
    ("qsft", {"tau": -0.1}, r"tau must be in \(0, 1\]"),
    ("qsft", {"support_threshold": 1.0}, r"support_threshold must be in \[0, 1\)"),
    ("qsft", {"reward_transform": "episode_return:1:0"}, r"LO must be below HI"),
    ("qsft", {"loss_variant": "fancy"}, r"loss_variant must be one of"),
    ("qsft", {"support_reweight_cap": 10.0}, r"support_reweight_cap .* needs loss_variant 'support'"),
    ("qsft", {"q_start_value": 0.1}, r"q_start_value must be in \[0, 1\], with loss_variant 'support'"),
    ("qsft", {"mc_lower_bound": "yes"}, r"mc_lower_bound must be 'none', 'return' or 'best'"),
    ("filtered_bc", {"top": 0.0}, r"top must be in \(0, 1\]"),
    ("bc", {"gamma": 0.9}, r"unknown config key\(s\) for --algo bc: gamma"),
    ("bc", {"truncation": "middle"}, r"truncation must be one of"),
])
def test_impossible_values_rejected_with_one_line(tmp_path, algo, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        make_config(algo, tmp_path, {"report_to": "none", **overrides})
    assert "\n" not in str(err.value)


def test_diverging_run_stops_with_a_message_and_writes_no_weights(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(NumericalError, match=r"step \d+: loss/behavior is (nan|inf)") as err:
        train("bc", random_episodes(20), "tiny", out,
              {"model_preset": "micro", "history_turns": 1, "max_length": 32, "learning_rate": 1e30,
               "max_steps": 50, "per_device_train_batch_size": 8, "report_to": "none", "save_strategy": "no",
               "disable_tqdm": True, "lr_scheduler_type": "constant", "warmup_steps": 0})
    assert "learning rate" in str(err.value)
    assert not (out / "model.safetensors").exists() and not (out / "qsft.json").exists()


def test_dummy_variant_default_needs_its_token(tmp_path):
    """The default variant is 'dummy' everywhere: a trainer built without the reserved token says so at once."""
    from qsft.data.tiny_tokenizer import build_tiny_tokenizer
    from qsft.models.loading import build_tiny_model
    from qsft.training.data import qsft_dataset
    from qsft.training.qsft_trainer import QSFTTrainer

    episodes = random_episodes(4)
    tokenizer = build_tiny_tokenizer([t.text for ep in episodes for t in ep.turns], "word")
    config = make_config("qsft", tmp_path, {"report_to": "none", "use_cpu": True, "max_length": 32,
                                            "reward_transform": "success", "gamma": 0.9, "save_strategy": "no"})
    assert config.loss_variant == "dummy"
    dataset, _ = qsft_dataset(episodes, tokenizer, config, None)
    with pytest.raises(ConfigError, match="loss_variant 'dummy' needs the reserved token"):
        QSFTTrainer(build_tiny_model(tokenizer, "micro", 32, seed=0), build_tiny_model(tokenizer, "micro", 32, seed=1),
                    config, dataset, tokenizer)
