"""Target network in bfloat16: stochastic rounding, Polyak averaging against a float32 reference, trainer use."""

import pytest
import torch

from qsft.errors import ConfigError
from qsft.models.target import make_target, polyak_update, round_stochastic_bf16
from qsft.training.config import QSFTConfig


def _bf16_neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two bfloat16 values around each float32 (towards zero, away from zero), from the bit patterns."""
    bits = x.view(torch.int32)
    down = (bits & -65536).view(torch.float32)
    up = ((bits & -65536) + 65536).view(torch.float32)
    return down, up


def test_stochastic_rounding_picks_a_neighbour_with_the_unbiased_probability():
    gen = torch.Generator().manual_seed(0)
    x = torch.tensor([1.0 + 2 ** -9, -3.3, 0.0123, 1e-20, 2.0], dtype=torch.float32)  # 2.0 is exact in bf16
    down, up = _bf16_neighbours(x)
    draws = torch.stack([round_stochastic_bf16(x, gen).float() for _ in range(20000)])
    assert bool(((draws == down) | (draws == up)).all())
    p_up = (draws == up).double().mean(0)
    expected = ((x.double() - down.double()) / (up.double() - down.double()))
    torch.testing.assert_close(p_up, expected, atol=0.015, rtol=0)
    torch.testing.assert_close(draws.double().mean(0), x.double(), atol=0, rtol=1e-4)  # E[round(x)] = x
    assert bool((draws[:, 4] == 2.0).all())


def test_bf16_polyak_follows_the_float32_average_where_nearest_rounding_stalls():
    n, tau, steps = 20000, 0.01, 300
    source = torch.full((n,), 1.001)
    reference = torch.ones(n, dtype=torch.float64)  # the float32/float64 exponential moving average
    stochastic = torch.ones(n, dtype=torch.bfloat16)
    nearest = torch.ones(n, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        reference = (1 - tau) * reference + tau * source.double()
        polyak_update([stochastic], [source], tau, generator=gen)
        nearest.lerp_(source.to(torch.bfloat16), tau)
    assert bool((nearest == 1.0).all())  # every update is below half a bfloat16 step (2^-8 at 1.0): lost
    assert abs(stochastic.double().mean().item() - reference.mean().item()) < 5e-5  # ~ 0.00095 moved, exactly


def test_polyak_update_of_a_bf16_module_chunks_large_tensors(monkeypatch):
    import qsft.models.target as target_module

    monkeypatch.setattr(target_module, "_CHUNK", 7)  # several chunks per tensor, a ragged last one
    source = torch.nn.Linear(5, 4)
    target = make_target(source, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    polyak_update(target, source, 1.0)  # tau = 1 is a copy: the exact float32 value, rounded to a neighbour
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        down, up = _bf16_neighbours(s.detach().clone())
        assert bool(((t.float() == down) | (t.float() == up)).all())


def test_lora_refuses_a_bf16_target(tmp_path):
    with pytest.raises(ConfigError, match="target_dtype applies to full fine-tuning"):
        QSFTConfig(output_dir=str(tmp_path), lora=True, target_dtype="bfloat16")
    with pytest.raises(ConfigError, match="target_dtype must be"):
        QSFTConfig(output_dir=str(tmp_path), target_dtype="float16")


def test_trainer_with_a_bf16_target_matches_float32_targets_and_trains(tmp_path):
    from qsft.data.collate import TokenMDPCollator
    from qsft.data.tiny_tokenizer import build_tiny_tokenizer
    from qsft.models.loading import bos_token_id, build_tiny_model
    from qsft.training.data import qsft_dataset
    from qsft.training.qsft_trainer import QSFTTrainer
    from tests.oracle_chain import random_episodes

    episodes = random_episodes(8, seed=2)
    tokenizer = build_tiny_tokenizer([t.text for ep in episodes for t in ep.turns], "char")
    trainers = {}
    for dtype in ("float32", "bfloat16"):
        config = QSFTConfig(output_dir=str(tmp_path / dtype), report_to="none", use_cpu=True, max_length=48,
                            reward_transform="success", gamma=0.9, support_threshold=0.05, max_steps=3,
                            per_device_train_batch_size=4, save_strategy="no", target_dtype=dtype, tau=0.5,
                            learning_rate=1e-2, loss_variant="uniform")
        dataset, _ = qsft_dataset(episodes, tokenizer, config, None)
        trainers[dtype] = QSFTTrainer(build_tiny_model(tokenizer, "micro", 64, seed=0),
                                      build_tiny_model(tokenizer, "micro", 64, seed=1), config, dataset, tokenizer)
    low = trainers["bfloat16"]
    assert {p.dtype for p in low.target_model.parameters()} == {torch.bfloat16}
    batch = TokenMDPCollator(tokenizer.pad_token_id, bos_token_id(tokenizer))(low.train_dataset.samples[:8])
    with torch.no_grad():
        full_values = trainers["float32"].bootstrap_values(batch)[0]
        low_values = low.bootstrap_values(batch)[0]
    states = batch["next_state_index"].clamp(min=0)
    # the same weights, rounded to bfloat16: state values agree to bfloat16 precision
    torch.testing.assert_close(low_values.gather(1, states), full_values.gather(1, states), atol=0.03, rtol=0)
    before = [p.detach().clone() for p in low.target_model.parameters()]
    low.train()
    moved = [not torch.equal(b, p) for b, p in zip(before, low.target_model.parameters(), strict=True)]
    assert all(moved) and {p.dtype for p in low.target_model.parameters()} == {torch.bfloat16}
