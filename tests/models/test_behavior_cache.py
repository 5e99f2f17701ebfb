"""Behavior cache: the cached Q-SFT loss equals the live one for supports of any size, stale caches are rebuilt."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from qsft.algorithms.qsft import qsft_loss
from qsft.data.collate import TokenMDPCollator
from qsft.data.tiny_tokenizer import build_tiny_tokenizer
from qsft.models.behavior_cache import (
    CACHE_FILE,
    BehaviorCachedDataset,
    BehaviorCacheError,
    behavior_cache_for,
    build_behavior_cache,
    load_behavior_cache,
    logits_at,
    save_behavior_cache,
    state_positions,
    validate_behavior_cache,
)
from qsft.models.loading import bos_token_id, build_tiny_model, ensure_dummy_token
from qsft.training.config import QSFTConfig
from qsft.training.data import qsft_dataset
from qsft.training.qsft_trainer import QSFTTrainer
from tests.oracle_chain import random_episodes


def _setup(tmp_path, history_turns, variant, threshold=1e-4, vocab=None):
    episodes = random_episodes(6, seed=1)
    tokenizer = build_tiny_tokenizer([t.text for ep in episodes for t in ep.turns], "char")
    q_model = build_tiny_model(tokenizer, "micro", 64, seed=0)
    dummy = ensure_dummy_token(tokenizer, q_model, "[DUMMY]") if variant == "dummy" else None
    behavior = build_tiny_model(tokenizer, "micro", 64, seed=1)
    behavior.resize_token_embeddings(len(tokenizer))
    if vocab is not None:  # more actions than the tokenizer has, with random (not tied) logits
        for model in (q_model, behavior):
            model.resize_token_embeddings(vocab, mean_resizing=False)
    config = QSFTConfig(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, max_length=48,
                        history_turns=history_turns, reward_transform="success", gamma=0.9, loss_variant=variant,
                        support_threshold=threshold, per_device_train_batch_size=8)
    dataset, _ = qsft_dataset(episodes, tokenizer, config, dummy)
    trainer = QSFTTrainer(q_model, behavior, config, dataset, tokenizer, dummy_token_id=dummy)
    with torch.no_grad():  # a target that differs from the Q-model, as after some training
        for p in trainer.target_model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return trainer, tokenizer, dataset, dummy


def _reference_loss(trainer, batch, dummy):
    """The dense path: full [B, T, V] target and behavior logits into `qsft_loss`."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        target = trainer.target_model(input_ids=ids, attention_mask=mask).logits
        behavior = trainer.behavior_model(input_ids=ids, attention_mask=mask).logits
        next_t = next_b = None
        if "next_input_ids" in batch:
            nxt, nmask = batch["next_input_ids"], batch["next_attention_mask"]
            last = torch.arange(nxt.shape[0]), nmask.sum(1) - 1
            next_t = trainer.target_model(input_ids=nxt, attention_mask=nmask).logits[last]
            next_b = trainer.behavior_model(input_ids=nxt, attention_mask=nmask).logits[last]
        q_logits = trainer.model(input_ids=ids, attention_mask=mask).logits
    return qsft_loss(q_logits, target, behavior, ids, batch["action_mask"], batch["reward"], batch["discount"],
                     batch["next_state_index"], next_t, next_b, variant=trainer.loss_variant, dummy_token_id=dummy,
                     support_threshold=trainer.args.support_threshold)


def trainer_targets(trainer, batch):
    from qsft.algorithms.qsft import bellman_targets

    with torch.no_grad():
        values, external, _, _ = trainer.bootstrap_values(batch)
    return bellman_targets(values, batch["reward"], batch["discount"], batch["next_state_index"],
                           batch["action_mask"], external)[0]


def _assert_cached_equals_live(trainer, tokenizer, samples, cache, dummy, history_turns):
    """Batch by batch: state values, external values, log pi_beta of agent tokens and the loss from the cache
    equal the live pass, which equals the dense reference. Returns the last cached batch and its loss."""
    collate = TokenMDPCollator(tokenizer.pad_token_id, bos_token_id(tokenizer))
    cached = BehaviorCachedDataset(samples, cache)
    for start in range(0, len(samples), 8):
        chunk = range(start, min(start + 8, len(samples)))
        live_batch = collate([samples[i] for i in chunk])
        cached_batch = collate([cached[i] for i in chunk])
        with torch.no_grad():
            live_values, live_external, live_logprobs, _ = trainer.bootstrap_values(live_batch)
            cached_values, cached_external, cached_logprobs, _ = trainer.bootstrap_values(cached_batch)
        nsi = live_batch["next_state_index"]
        read = live_values.gather(1, nsi.clamp(min=0))[nsi >= 0]  # the values the targets read
        torch.testing.assert_close(cached_values.gather(1, nsi.clamp(min=0))[nsi >= 0], read, atol=1e-5, rtol=1e-5)
        agent = live_batch["action_mask"]  # log pi_beta of the agent's tokens (the q_hat diagnostic)
        torch.testing.assert_close(cached_logprobs[agent], live_logprobs[agent], atol=1e-5, rtol=1e-5)
        if history_turns is not None:
            external = (nsi == -2).any(1)  # rows whose last turn bootstraps from next_input_ids
            assert external.any()
            torch.testing.assert_close(cached_external[external], live_external[external], atol=1e-5, rtol=1e-5)
        live = trainer.compute_loss(trainer.model, live_batch)
        live_q_hat = trainer._metrics["q_hat/mean"][-1]
        from_cache = trainer.compute_loss(trainer.model, cached_batch)
        cached_q_hat = trainer._metrics["q_hat/mean"][-1]
        reference = _reference_loss(trainer, live_batch, dummy)
        torch.testing.assert_close(reference.targets, trainer_targets(trainer, live_batch), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(trainer_targets(trainer, cached_batch), reference.targets, atol=1e-5, rtol=1e-5)
        assert math.isclose(live.item(), reference.loss.item(), rel_tol=1e-5, abs_tol=1e-5)
        assert math.isclose(from_cache.item(), live.item(), rel_tol=1e-5, abs_tol=1e-5)
        assert math.isclose(cached_q_hat, live_q_hat, rel_tol=1e-5)
        assert math.isclose(live_q_hat, reference.mean_q_hat, rel_tol=1e-5)
    return cached_batch, from_cache


@pytest.mark.parametrize(("history_turns", "variant"), [(None, "uniform"), (1, "dummy"), (2, "uniform")])
def test_cached_loss_equals_live_and_dense_reference(tmp_path, history_turns, variant):
    # near-uniform random models over ~12 tokens: a threshold of 0.08 leaves part of the vocabulary out
    # of the support, so state values fall below 1 and the targets depend on them
    trainer, tokenizer, dataset, dummy = _setup(tmp_path, history_turns, variant, threshold=0.08)
    cache = build_behavior_cache(trainer.behavior_model, dataset.samples, trainer.args.support_threshold,
                                 exclude_token_id=dummy, batch_size=3, pad_token_id=tokenizer.pad_token_id)
    cached_batch, from_cache = _assert_cached_equals_live(trainer, tokenizer, dataset.samples, cache, dummy,
                                                          history_turns)
    # the loss does depend on the cached values: pi_beta raised by e^0.5 lowers every ratio
    cached_batch["behavior_support_logprobs"] += 0.5
    cached_batch["behavior_next_support_logprobs"] += 0.5
    assert abs(trainer.compute_loss(trainer.model, cached_batch).item() - from_cache.item()) > 1e-3


def test_supports_larger_than_the_old_top_k_are_kept_whole(tmp_path):
    # 400 near-flat actions and a threshold near 1/400: every support has 170-200 actions, more than the
    # 128 most likely the format-1 cache kept (its values were off by 0.03 here), and the sizes
    # differ from state to state (ragged storage, padded per sample and per batch)
    threshold = 2.5e-3
    trainer, tokenizer, dataset, _ = _setup(tmp_path, 1, "uniform", threshold=threshold, vocab=400)
    with torch.no_grad():  # a target near pi_beta: state values near 1, where the clipped targets still read them
        for target, behavior in zip(trainer.target_model.parameters(), trainer.behavior_model.parameters()):
            target.copy_(behavior + torch.randn_like(behavior) * 0.003)
    samples = dataset.samples
    cache = build_behavior_cache(trainer.behavior_model, samples, threshold, batch_size=3,
                                 pad_token_id=tokenizer.pad_token_id)
    sizes = cache.support_size
    assert 128 < int(sizes.min()) < int(sizes.max())
    assert cache.stats()["max_support_size"] == int(sizes.max()) and cache.stats()["states"] == len(sizes)
    # slow reference for one sample: each stored support is S(s) by its definition, with its log-probs
    sample, rows = samples[0], cache.rows(0)
    with torch.no_grad():
        behavior = torch.log_softmax(trainer.behavior_model(input_ids=torch.tensor([sample.input_ids])).logits[0], -1)
    for n, pos in enumerate(rows.state_index.tolist()):
        if pos < 0:
            continue
        stored = torch.isfinite(rows.support_logprobs[n])
        expected = (behavior[pos] > math.log(threshold)).nonzero()[:, 0]
        assert rows.support_ids[n][stored].tolist() == expected.tolist()
        torch.testing.assert_close(rows.support_logprobs[n][stored], behavior[pos][expected])
    _assert_cached_equals_live(trainer, tokenizer, samples, cache, None, 1)


class _IntLogitsToKeep(torch.nn.Module):
    """A causal LM whose `logits_to_keep` is an int (last n positions) or a 1-D index, not a [B, T] mask."""

    def __init__(self, model, slicing: str) -> None:
        super().__init__()
        self.model, self.slicing = model, slicing

    def forward(self, input_ids, attention_mask=None, use_cache=False, logits_to_keep: int = 0):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, T, V]
        if self.slicing == "negative_int":  # `-mask` of a bool tensor: RuntimeError
            logits = logits[:, -logits_to_keep:]
        elif self.slicing == "truth_test" and logits_to_keep:  # bool() of a [B, T] tensor: RuntimeError
            logits = logits[:, -logits_to_keep:]
        elif self.slicing == "index":  # transformers' int-or-1-D-index slicing: IndexError on a [B, T] mask
            logits = logits[:, slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep]
        return SimpleNamespace(logits=logits)  # "ignored": every position, [B, T, V]


@pytest.mark.parametrize("slicing", ["negative_int", "truth_test", "index", "ignored"])
def test_logits_at_falls_back_to_a_full_forward(tmp_path, slicing):
    trainer, tokenizer, dataset, _ = _setup(tmp_path, None, "uniform")
    model = _IntLogitsToKeep(trainer.behavior_model, slicing)
    ids = torch.tensor([s.input_ids[:20] for s in dataset.samples[:3]])  # [3, 20]
    mask = torch.ones_like(ids)
    keep = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.3  # [3, 20]
    if slicing != "ignored":  # the model does reject the mask (what the fallback exists for)
        with pytest.raises((RuntimeError, IndexError)):
            model(input_ids=ids, attention_mask=mask, logits_to_keep=keep)
    with torch.no_grad():
        full = trainer.behavior_model(input_ids=ids, attention_mask=mask).logits  # [3, 20, V]
        torch.testing.assert_close(logits_at(model, ids, mask, keep), full[keep])


def test_cache_covers_every_state_the_targets_read(tmp_path):
    trainer, tokenizer, dataset, _ = _setup(tmp_path, 1, "uniform")
    for sample in dataset.samples:
        read = {i for i in sample.next_state_index if i >= 0}
        positions = state_positions(sample)
        assert read == {p for p in positions if p >= 0}
        assert (-2 in sample.next_state_index) == (positions[-1:] == [-2])


def test_cache_is_reused_only_for_the_same_model_data_and_settings(tmp_path):
    trainer, tokenizer, dataset, _ = _setup(tmp_path, 1, "uniform")
    samples, behavior = dataset.samples, trainer.behavior_model
    path = tmp_path / CACHE_FILE
    first, built = behavior_cache_for(path, behavior, samples, 1e-4)
    assert built and path.is_file()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # atomic write leaves no temp file
    again, built = behavior_cache_for(path, behavior, samples, 1e-4)
    assert not built and again.key == first.key
    torch.testing.assert_close(again.support_logprobs, first.support_logprobs)
    assert behavior_cache_for(path, behavior, samples, 1e-3)[1]  # other threshold
    assert behavior_cache_for(path, behavior, samples, 1e-3, exclude_token_id=3)[1]  # other excluded token
    changed = copy.deepcopy(behavior)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    assert behavior_cache_for(path, changed, samples, 1e-3)[1]  # other weights
    assert behavior_cache_for(path, changed, samples[:-1], 1e-3)[1]  # other data
    path.write_bytes(b"not a safetensors file")
    assert behavior_cache_for(path, changed, samples[:-1], 1e-3)[1]  # damaged: rebuilt


def test_roundtrip_and_mismatch_errors(tmp_path):
    trainer, tokenizer, dataset, _ = _setup(tmp_path, 2, "uniform")
    samples = dataset.samples
    cache = build_behavior_cache(trainer.behavior_model, samples, 0.08)
    assert len(set(cache.support_size.tolist())) > 1  # ragged: supports of several sizes
    loaded = load_behavior_cache(save_behavior_cache(cache, tmp_path / CACHE_FILE))
    for name in ("state_offsets", "state_index", "support_offsets", "support_ids", "support_logprobs",
                 "token_offsets", "action_logprobs"):
        torch.testing.assert_close(getattr(loaded, name), getattr(cache, name))
    assert (loaded.key, loaded.support_threshold, loaded.exclude_token_id) == (cache.key, 0.08, None)
    validate_behavior_cache(loaded, samples, cache.key)
    with pytest.raises(BehaviorCacheError, match="stale"):
        validate_behavior_cache(loaded, samples, "another key")
    with pytest.raises(BehaviorCacheError, match="samples"):
        BehaviorCachedDataset(samples[1:], loaded)
    with pytest.raises(BehaviorCacheError, match="next states"):
        BehaviorCachedDataset(samples[::-1], loaded)


def test_train_uses_the_cache_by_default_and_refuses_it_with_cotrain(tmp_path):
    from qsft.errors import ConfigError
    from qsft.training.run import RunInfo, train

    options = {"max_steps": 8, "behavior_max_steps": 2, "per_device_train_batch_size": 8, "save_strategy": "no",
               "report_to": "none", "use_cpu": True, "model_preset": "micro", "max_length": 48, "history_turns": 1,
               "reward_transform": "success", "gamma": 0.9, "disable_tqdm": True}
    out = train("qsft", random_episodes(10, seed=0), "tiny", tmp_path / "run", options)
    stats = RunInfo.load(out).extra["behavior_cache"]
    assert (out / CACHE_FILE).is_file() and stats["states"] > 0 and stats["max_support_size"] > 0
    # a run that reads a fraction of an epoch keeps the live behavior pass (the cache would cost more)
    short = train("qsft", random_episodes(10, seed=0), "tiny", tmp_path / "short", {**options, "max_steps": 1})
    assert not (short / CACHE_FILE).exists() and "behavior_cache" not in RunInfo.load(short).extra
    with pytest.raises(ConfigError, match="behavior_cache"):
        train("qsft", random_episodes(10, seed=0), "tiny", tmp_path / "co", {**options, "behavior": "cotrain",
                                                                              "behavior_cache": True})
