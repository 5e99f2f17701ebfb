"""Filtered BC: which episodes are kept (against a slow reference, ties included), and that only they train."""

import random
from fractions import Fraction

import pytest

from qsft.data.episode import Episode, Turn
from qsft.data.io import save_episodes
from qsft.models.loading import load_model, load_tokenizer
from qsft.training.data import select_top_episodes
from qsft.training.run import RunInfo, train


def _episodes(returns: list[float], low_word: str = "ok", threshold: float = float("inf")) -> list[Episode]:
    """One episode per return; agent text says `low_word` when the return is below `threshold`."""
    episodes = []
    for i, ret in enumerate(returns):
        word = low_word if ret < threshold else "good"
        turns = (Turn("env", f"start {i % 3}"), Turn("agent", f"go {word}", ret / 2), Turn("env", "next"),
                 Turn("agent", "stop", ret / 2))
        episodes.append(Episode(f"ep-{i}", turns, True))
    return episodes


def _reference_keep(returns: list[float], top: float) -> list[int]:
    """Slow and obvious: rank = episodes strictly better, plus equal ones earlier in the file."""
    keep = max(1, -(-Fraction(str(top)) * len(returns) // 1))  # ceil(top * N) in exact arithmetic
    kept = []
    for i, r in enumerate(returns):
        rank = sum(1 for j, other in enumerate(returns) if other > r or (other == r and j < i))
        if rank < keep:
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("top", [0.01, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_select_top_episodes_matches_slow_reference_with_ties(seed, top):
    rng = random.Random(seed)
    n = rng.randrange(1, 40)
    returns = [float(rng.choice([0, 1, 1, 2, 3, 3, 3, -1])) for _ in range(n)]  # many ties
    episodes = _episodes(returns)
    kept = select_top_episodes(episodes, top)
    assert [ep.id for ep in kept] == [f"ep-{i}" for i in _reference_keep(returns, top)]


@pytest.mark.parametrize("top,n", [(0.14, 50), (0.28, 25), (0.56, 50), (0.7, 10)])
def test_top_fraction_is_not_inflated_by_float_rounding(top, n):
    # 0.28 * 25 == 7.000000000000001 in floating point: the fraction means 7 episodes, not 8
    kept = select_top_episodes(_episodes([float(i) for i in range(n)]), top)
    assert len(kept) == len(_reference_keep(list(range(n)), top)) == round(top * n)


def test_train_filtered_bc_trains_on_the_kept_episodes_only(tmp_path):
    returns = [0.0, 2.0, 0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0, 0.0]
    # only the bottom episodes say "oops": the tiny tokenizer is built from the training episodes,
    # so a saved vocabulary without "oops" proves none of them reached training
    save_episodes(tmp_path / "data.jsonl", _episodes(returns, low_word="oops", threshold=1.0))
    out = train("filtered_bc", tmp_path / "data.jsonl", "tiny", tmp_path / "run",
                {"top": 0.3, "max_steps": 2, "per_device_train_batch_size": 4, "save_strategy": "no",
                 "report_to": "none", "use_cpu": True, "model_preset": "micro", "max_length": 32})
    info = RunInfo.load(out)
    assert info.algo == "filtered_bc" and info.extra["episodes_kept"] == 3
    tokenizer = load_tokenizer(out)
    vocab = tokenizer.get_vocab()
    assert " good" in vocab and " oops" not in vocab and "oops" not in vocab  # words carry their leading space
    model = load_model(out)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
