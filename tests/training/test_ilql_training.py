"""ILQL end to end on tiny models: training, checkpoints with heads, resume, the decoding policy."""

import json

import pytest
import torch
from safetensors.torch import load_file

from qsft.algorithms.ilql import decoding_logits
from qsft.data.io import load_episodes, save_episodes
from qsft.data.tiny_tokenizer import build_tiny_tokenizer
from qsft.errors import ConfigError, ModelLoadError
from qsft.models.loading import build_tiny_model
from qsft.training.data import qsft_dataset
from qsft.training.ilql import HEADS_FILE, ILQLConfig, ILQLModel, ILQLTrainer, load_ilql_policy, train_ilql
from qsft.training.run import RunInfo, train
from tests.oracle_chain import GAMMA, random_episodes

METRICS = ("loss/q", "loss/v", "loss/cql", "loss/bc", "q/mean", "v/mean")


def _config(out, **overrides) -> ILQLConfig:
    fields = dict(output_dir=str(out), max_steps=4, per_device_train_batch_size=8, save_steps=2, logging_steps=1,
                  report_to="none", use_cpu=True, gamma=GAMMA, max_length=32, reward_transform="success",
                  history_turns=1, seed=0, disable_tqdm=True)
    fields.update(overrides)
    return ILQLConfig(**fields)


def _heads(model: ILQLModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.heads_state_dict().items()}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Oracle-chain episodes through JSONL, a tokenizer, and a 4-step ILQL run (checkpoints at 2 and 4)."""
    root = tmp_path_factory.mktemp("ilql")
    save_episodes(root / "chain.jsonl", random_episodes(60, seed=0))
    episodes = load_episodes(root / "chain.jsonl")
    tokenizer = build_tiny_tokenizer([t.text for ep in episodes for t in ep.turns])
    run = root / "run"
    report = train_ilql(build_tiny_model(tokenizer, "micro", 64, seed=0), tokenizer, episodes, _config(run))
    return root, episodes, tokenizer, run, report


def test_training_writes_heads_checkpoints_and_metrics(chain):
    _, episodes, tokenizer, run, report = chain
    assert report.transform == "success" and report.episodes == len(episodes)
    for folder in (run, run / "checkpoint-2", run / "checkpoint-4"):
        assert (folder / "model.safetensors").is_file() and (folder / HEADS_FILE).is_file()
        assert set(load_file(str(folder / HEADS_FILE))) == {
            "q.q1.weight", "q.q1.bias", "q.q2.weight", "q.q2.bias",
            "target_q.q1.weight", "target_q.q1.bias", "target_q.q2.weight", "target_q.q2.bias", "v.weight", "v.bias"}
    history = json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    logged = [entry for entry in history if "loss" in entry]
    assert len(logged) == 4
    for entry in logged:
        for name in METRICS:
            assert name in entry and entry[name] == entry[name], (name, entry)  # present and not NaN
    # the heads trained: online Q moved away from the (Polyak-lagging) target Q
    heads = load_file(str(run / HEADS_FILE))
    assert not torch.equal(heads["q.q1.weight"], heads["target_q.q1.weight"])


def test_polyak_callback_runs_once_per_optimizer_step(chain, tmp_path):
    _, episodes, tokenizer, _, _ = chain
    # tau = 1 copies the online heads into the targets after every step, so they must end equal
    config = _config(tmp_path / "run", max_steps=2, tau=1.0, save_strategy="no", history_turns=None)
    model = ILQLModel(build_tiny_model(tokenizer, "micro", 64, seed=1))
    initial = _heads(model)
    dataset, _ = qsft_dataset(episodes, tokenizer, config, dummy_token_id=None)
    ILQLTrainer(model, config, dataset, tokenizer).train()
    assert not torch.equal(model.q.q1.weight, initial["q.q1.weight"])
    for name, param in model.q.state_dict().items():
        assert torch.equal(param, model.target_q.state_dict()[name]), name


def test_resume_restores_heads_and_continues_exactly(chain, tmp_path):
    _, episodes, tokenizer, run, _ = chain
    config = _config(tmp_path / "resumed")
    model = ILQLModel(build_tiny_model(tokenizer, "micro", 64, seed=7))  # different weights everywhere
    dataset, _ = qsft_dataset(episodes, tokenizer, config, dummy_token_id=None)
    trainer = ILQLTrainer(model, config, dataset, tokenizer)
    checkpoint = run / "checkpoint-2"
    trainer._load_from_checkpoint(str(checkpoint))
    saved = load_file(str(checkpoint / HEADS_FILE))
    for name, value in _heads(model).items():
        assert torch.equal(value, saved[name]), name  # q, target q and v all restored
    trainer.train(resume_from_checkpoint=str(checkpoint))
    finished = load_file(str(run / HEADS_FILE))
    for name, value in _heads(model).items():
        assert torch.allclose(value, finished[name], atol=1e-6), name
    reference = ILQLModel(build_tiny_model(tokenizer, "micro", 64, seed=3))
    reference.load_pretrained_weights(run)
    for (name, a), b in zip(model.base.state_dict().items(), reference.base.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_policy_logits_are_ilql_logits_and_step_with_a_kv_cache(chain):
    _, _, tokenizer, run, _ = chain
    policy = load_ilql_policy(run)
    assert policy.decode and policy.beta == 1.0
    ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer.encode("p1 R", add_special_tokens=False)] * 2)
    ids[1, 1] = tokenizer.convert_tokens_to_ids("p2")
    with torch.no_grad():
        full = policy(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        assert full.shape == (2, ids.shape[1], len(tokenizer))
        # the decoding formula on the target Q heads and V of the saved run
        hidden = policy.base(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        lm_logits = policy.base(input_ids=ids).logits
        expected = decoding_logits(lm_logits, policy.target_q.q1(hidden), policy.target_q.q2(hidden),
                                   policy.v(hidden).squeeze(-1), beta=1.0)
        assert torch.allclose(full, expected, atol=1e-5)
        past, steps = None, []
        for t in range(ids.shape[1]):
            out = policy(input_ids=ids[:, t:t + 1], attention_mask=torch.ones_like(ids[:, :t + 1]),
                         past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits)
        assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
        # beta = 0 is behavior cloning: the LM head's log-probabilities
        bc = load_ilql_policy(run, beta=0.0)(input_ids=ids).logits
        assert torch.allclose(bc, torch.log_softmax(lm_logits, -1), atol=1e-5)
        policy.decode = False
        assert torch.allclose(policy(input_ids=ids).logits, lm_logits)


def test_loading_a_run_without_heads_is_one_clear_error(chain, tmp_path):
    _, _, tokenizer, _, _ = chain
    build_tiny_model(tokenizer, "micro", 64, seed=0).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=HEADS_FILE):
        load_ilql_policy(tmp_path)


@pytest.mark.parametrize("bad", [{"tau_expectile": 1.0}, {"tau": 0.0}, {"cql_weight": -1.0}, {"gamma": 0.0},
                                 {"reward_transform": "log"}])
def test_config_rejects_impossible_values(bad, tmp_path):
    with pytest.raises(ConfigError):
        _config(tmp_path, **bad)


def test_train_dispatches_ilql_and_records_the_run(chain, tmp_path):
    root, _, _, _, _ = chain
    out = train("ilql", root / "chain.jsonl", "tiny", tmp_path / "run",
                {"max_steps": 2, "per_device_train_batch_size": 8, "save_strategy": "no", "report_to": "none",
                 "use_cpu": True, "model_preset": "micro", "max_length": 64, "beta": 2.0, "gamma": GAMMA,
                 "reward_transform": "success"})
    info = RunInfo.load(out)
    assert info.algo == "ilql" and info.gamma == GAMMA and info.reward["transform"] == "success"
    assert info.extra["beta"] == 2.0
    policy = load_ilql_policy(out)
    assert policy.beta == 2.0 and load_ilql_policy(out, beta=0.5).beta == 0.5


@pytest.mark.parametrize("algo", ["ilql", "mc"])
def test_a_frozen_behavior_model_is_pi_beta_at_decoding(algo, chain, tmp_path):
    """`--behavior model`: the starting model (frozen) gives log pi_beta, the heads beta (Q - V) beside it."""
    from qsft.decoding.extraction import extract_policy_logits
    from qsft.decoding.policy import load_policy

    root, _, tokenizer, _, _ = chain
    base = tmp_path / "base"
    build_tiny_model(tokenizer, "micro", 64, seed=3).save_pretrained(base)
    tokenizer.save_pretrained(base)
    settings = {"max_steps": 2, "per_device_train_batch_size": 8, "save_strategy": "no", "report_to": "none",
                "use_cpu": True, "max_length": 64, "beta": 3.0, "gamma": GAMMA, "reward_transform": "success",
                "behavior": "model", "bc_weight": 0.0}
    out = train(algo, root / "chain.jsonl", str(base), tmp_path / "run", settings)
    info = RunInfo.load(out)
    assert info.behavior_path(out) == base.resolve() and info.extra["bc_weight"] == 0.0
    policy = load_policy(out)
    assert policy.mode == "advantage" and policy.beta == 3.0
    ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer.encode("p1", add_special_tokens=False)])
    with torch.no_grad():
        heads = load_ilql_policy(out)
        hidden = heads.base(input_ids=ids, output_hidden_states=True).hidden_states[-1][:, -1]
        advantage = torch.minimum(*heads.target_q(hidden)) - heads.v(hidden)
        behavior = build_tiny_model(tokenizer, "micro", 64, seed=3)(input_ids=ids).logits[:, -1]
        expected = torch.log_softmax(behavior, -1) + 3.0 * advantage
        got = extract_policy_logits(policy.mode, policy.models.model(input_ids=ids).logits[:, -1],
                                    policy.models.behavior_model(input_ids=ids).logits[:, -1], beta=policy.beta)
    # policy logits are log pi up to a constant per row
    assert torch.allclose(got - got.max(-1, keepdim=True).values, expected - expected.max(-1, keepdim=True).values,
                          atol=1e-4)


def test_behavior_model_needs_a_model_dir(chain, tmp_path):
    root, _, _, _, _ = chain
    with pytest.raises(ConfigError, match="pretrained model dir"):
        train("ilql", root / "chain.jsonl", "tiny", tmp_path / "run", {"behavior": "model", "use_cpu": True})
    assert not (tmp_path / "run").exists()
