"""`qsft pretrain`: causal-LM loss on every transcript token; the result is a base model for every method."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from qsft.cli import main
from qsft.data.io import save_episodes
from qsft.data.tokenize import tokenize_episodes
from qsft.decoding.policy import load_policy
from qsft.models.loading import load_model, load_tokenizer
from qsft.run_info import RunInfo
from qsft.training.config import PretrainConfig
from qsft.training.data import token_mdp_config
from qsft.training.pretrain import transcript_lm_loss, transition_windows
from tests.oracle_chain import chain_transitions, random_episodes

COMMON = ["--model_preset", "micro", "--max_length", "32", "--report_to", "none", "--save_strategy", "no",
          "--disable_tqdm", "true", "--use_cpu", "true", "--seed", "0"]


def test_transcript_loss_covers_every_token_against_a_loop():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    attention = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    terms = []
    for b in range(2):
        for t in range(1, 5):  # observation and agent tokens alike; padding never
            if attention[b, t]:
                probs = [float(torch.exp(logits[b, t - 1, v])) for v in range(7)]
                terms.append(-torch.log(torch.tensor(probs[int(ids[b, t])] / sum(probs))))
    assert torch.allclose(transcript_lm_loss(logits, ids, attention), torch.stack(terms).mean(), atol=1e-6)
    # BC's loss would read only agent tokens; this one differs from it whenever observations are present
    agent_only = F.cross_entropy(logits[0, :2], ids[0, 1:3])
    assert not torch.allclose(transcript_lm_loss(logits, ids, attention), agent_only)


def _next_observation_accuracy(model_dir) -> float:
    """How often the model's top next token after `p_s action [EOT]` is the observation the chain moves to."""
    model, tokenizer = load_model(model_dir).eval(), load_tokenizer(model_dir)
    config = PretrainConfig(output_dir="unused", report_to="none", max_length=32, reply_tokens=2)
    samples = [s for s in tokenize_episodes(chain_transitions(), tokenizer, token_mdp_config(tokenizer, config))
               if not s.action_mask[-1]]  # transitions that continue with an observation
    hits = 0
    with torch.no_grad():
        for sample in samples:
            ids = torch.tensor([sample.input_ids])
            hits += int(model(input_ids=ids).logits[0, -2].argmax()) == sample.input_ids[-1]
    return hits / len(samples)


def test_pretrain_learns_the_transitions_and_serves_as_base_for_every_method(tmp_path):
    data = tmp_path / "chain.jsonl"
    save_episodes(data, random_episodes(200))
    base, bc = tmp_path / "base", tmp_path / "bc-from-scratch"
    assert main(["pretrain", "--data", str(data), "--out", str(base), "--max_steps", "150",
                 "--learning_rate", "3e-3", "--per_device_train_batch_size", "32", *COMMON]) == 0
    assert main(["train", "--algo", "bc", "--data", str(data), "--out", str(bc), "--max_steps", "150",
                 "--learning_rate", "3e-3", "--per_device_train_batch_size", "32", *COMMON]) == 0
    # a plain HF model dir; it predicts where each move leads, which agent-token SFT never learns
    assert AutoModelForCausalLM.from_pretrained(base).config.n_layer == 2
    assert _next_observation_accuracy(base) >= 0.9
    assert _next_observation_accuracy(bc) <= 0.5
    # `qsft eval --run BASE` samples the base as it is (the data's policy, for probes such as wordle_probe.py)
    policy = load_policy(base)
    ids = torch.tensor([[load_tokenizer(base).bos_token_id]])
    assert policy.mode == "bc" and policy.models.behavior_model is None
    assert torch.equal(policy.models.model(ids).logits, load_model(base)(ids).logits)
    short = ["--max_steps", "2", "--per_device_train_batch_size", "8", "--history_turns", "1", *COMMON[2:]]
    for algo in ("bc", "qsft", "ilql", "mc"):
        extra = ["--reward_transform", "success", "--gamma", "0.9"] if algo != "bc" else []
        assert main(["train", "--algo", algo, "--data", str(data), "--model", str(base),
                     "--out", str(tmp_path / algo), *short, *extra]) == 0
        assert load_model(tmp_path / algo).config.n_embd == 64
    # --behavior model: the pretrained base itself is pi_beta (frozen), no BC phase
    assert main(["train", "--algo", "qsft", "--data", str(data), "--model", str(base), "--behavior", "model",
                 "--out", str(tmp_path / "q-base"), *short, "--reward_transform", "success", "--gamma", "0.9"]) == 0
    info = RunInfo.load(tmp_path / "q-base")
    assert info.behavior_model == str(base.resolve()) and not (tmp_path / "q-base" / "behavior").exists()


def test_behavior_model_needs_a_model_dir(tmp_path, capsys):
    data = tmp_path / "chain.jsonl"
    save_episodes(data, random_episodes(4))
    assert main(["train", "--algo", "qsft", "--data", str(data), "--model", "tiny", "--behavior", "model",
                 "--out", str(tmp_path / "q"), "--max_steps", "1", *COMMON]) == 2
    assert "--behavior model uses --model as the behavior policy" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()  # refused before anything was written


def test_history_windows_keep_every_transition():
    episodes = random_episodes(3, seed=1)
    windows = transition_windows(episodes, history_turns=1)
    assert len(windows) == sum(len(ep.agent_turns) for ep in episodes)
    for window in windows:
        episode = next(ep for ep in episodes if window.id.startswith(ep.id + "#"))
        i = int(window.id.split("#")[1])
        assert window.turns[:2] == episode.turns[i - 1:i + 1]  # the observation and the move
        if i + 1 < len(episode.turns):
            assert window.turns[2] == episode.turns[i + 1]  # ... and where the move led
        else:
            assert len(window.turns) == 2 and window.done
