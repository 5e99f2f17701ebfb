"""`--support data`: the agent tokens the data shows after each token, against slow references, and the
behavior cache and the live trainer path agreeing under it."""

import torch

from qsft.algorithms.qsft import max_ratio_dense
from qsft.data.collate import TokenMDPCollator
from qsft.data.support import DataSupport
from qsft.data.tokenize import TokenizedEpisode
from qsft.models.behavior_cache import BehaviorCachedDataset, build_behavior_cache
from qsft.models.loading import bos_token_id
from tests.models.test_behavior_cache import _setup


def sample(ids, mask):
    return TokenizedEpisode("e", ids, mask, [0.0] * len(ids), [0.0] * len(ids), [-1] * len(ids))


def test_allowed_is_the_set_of_agent_bigrams():
    samples = [sample([1, 5, 7, 8, 2, 5, 9, 2], [0, 0, 1, 1, 1, 0, 1, 1]),
               sample([1, 6, 7, 2], [0, 0, 1, 1])]
    pairs = {(ids[t - 1], ids[t]) for s in samples for ids, mask in [(s.input_ids, s.action_mask)]
             for t in range(1, len(ids)) if mask[t]}
    support = DataSupport.from_samples(samples)
    last = torch.tensor([5, 7, 8, 9, 6, 3, 1])
    mask = support.allowed(last, 12)
    for row, prev in enumerate(last.tolist()):
        known = any(p == prev for p, _ in pairs)
        for token in range(12):
            expected = (prev, token) in pairs if known else True  # an unseen predecessor keeps every token
            assert bool(mask[row, token]) == expected, (prev, token)


def test_max_ratio_dense_respects_allowed():
    torch.manual_seed(0)
    target, behavior = torch.randn(5, 9), torch.randn(5, 9)
    allowed = torch.rand(5, 9) > 0.5
    allowed[:, 0] = True
    got = max_ratio_dense(target, behavior, 0.05, allowed=allowed)
    p, pi = target.softmax(-1), behavior.softmax(-1)
    for row in range(5):
        ratios = [float(p[row, a] / pi[row, a]) for a in range(9) if pi[row, a] > 0.05 and allowed[row, a]]
        assert abs(float(got[row]) - (max(ratios) if ratios else 0.0)) < 1e-5


def test_cache_equals_live_under_data_support(tmp_path):
    trainer, tokenizer, dataset, dummy = _setup(tmp_path, 1, "dummy", threshold=0.02)
    support = DataSupport.from_samples(dataset.samples)
    collate = TokenMDPCollator(tokenizer.pad_token_id, bos_token_id(tokenizer))
    batch = collate(dataset.samples[:8])
    with torch.no_grad():
        trainer.data_support = None
        plain, plain_external, _, _ = trainer.bootstrap_values(batch)
        trainer.data_support = support
        live, live_external, _, _ = trainer.bootstrap_values(batch)
    cache = build_behavior_cache(trainer.behavior_model, dataset.samples, 0.02, exclude_token_id=dummy,
                                 pad_token_id=tokenizer.pad_token_id, data_support=support)
    cached_batch = collate([BehaviorCachedDataset(dataset.samples, cache)[i] for i in range(8)])
    with torch.no_grad():
        cached, cached_external, _, _ = trainer.bootstrap_values(cached_batch)
    nsi = batch["next_state_index"]
    read = nsi >= 0
    torch.testing.assert_close(cached.gather(1, nsi.clamp(min=0))[read], live.gather(1, nsi.clamp(min=0))[read])
    external = (nsi == -2).any(1)
    torch.testing.assert_close(cached_external[external], live_external[external])
    # random models spread pi_beta over tokens the data never shows there: the data support removes them
    assert (live.gather(1, nsi.clamp(min=0))[read] < plain.gather(1, nsi.clamp(min=0))[read] - 1e-3).any()
