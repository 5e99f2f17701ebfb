"""`load_policy`: which model(s) each kind of run decodes with, and which modes it allows."""

import sys
import types

import pytest
import torch

from qsft.decoding.policy import load_policy
from qsft.errors import ConfigError
from tests.decoding.fake_runs import fake_qsft_run, fake_single_model_run


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_qsft_run_modes_load_the_right_models(tmp_path):
    _, q_model, behavior = fake_qsft_run(tmp_path)
    policy = load_policy(tmp_path, default_beta=4.0)
    assert policy.mode == "beta" and policy.beta == 4.0  # the env's default beta when none is given
    assert same_weights(policy.models.model, q_model) and same_weights(policy.models.behavior_model, behavior)
    assert policy.models.support_threshold == 1e-3 and policy.models.dummy_token_id is not None
    assert load_policy(tmp_path, "q_greedy", beta=2.0).beta == 2.0
    p_theta = load_policy(tmp_path, "p_theta")
    assert same_weights(p_theta.models.model, q_model) and p_theta.models.behavior_model is None
    bc = load_policy(tmp_path, "bc")  # the run's own behavior model
    assert same_weights(bc.models.model, behavior) and bc.models.behavior_model is None


def test_single_model_runs_decode_with_bc_only(tmp_path):
    _, model = fake_single_model_run(tmp_path, "filtered_bc")
    policy = load_policy(tmp_path)
    assert policy.mode == "bc" and same_weights(policy.models.model, model)
    with pytest.raises(ConfigError, match="only --decode bc"):
        load_policy(tmp_path, "beta")
    with pytest.raises(ConfigError, match="unknown decoding mode"):
        load_policy(tmp_path, "softmax")


def test_ilql_runs_use_the_ilql_loader_with_beta(tmp_path, monkeypatch):
    _, model = fake_single_model_run(tmp_path, "ilql")
    calls = []

    def load_ilql_policy(run_dir, beta):
        calls.append((run_dir, beta))
        return model

    monkeypatch.setitem(sys.modules, "qsft.training.ilql", types.SimpleNamespace(load_ilql_policy=load_ilql_policy))
    policy = load_policy(tmp_path, beta=3.0)
    assert calls == [(tmp_path, 3.0)] and policy.mode == "bc" and policy.models.model is model
    model.beta = 0.5  # the beta stored with the ILQL heads applies when none is asked for
    assert load_policy(tmp_path).beta == 0.5 and calls[-1] == (tmp_path, None)
