"""A GPT-2-shaped model dir with a real-size (50,257-token) vocabulary, and the chain with two-token actions.

Built from configs, nothing downloaded; shared by tests/training/test_real_vocab_cli.py and
benchmarks/real_vocab_chain.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from qsft.cli import main
from qsft.data.episode import Episode, Turn
from qsft.data.io import save_episodes
from tests.oracle_chain import GAMMA, chain_transitions, q_star

VOCAB = 50_257
UTTERANCE = {"L": "step left", "R": "step right"}


def save_gpt2_shaped_model(folder) -> None:
    """A 2-layer GPT-2 with a 50,257-token word-level vocabulary (chain words + filler), saved like any HF model."""
    words = ["<|endoftext|>", "<|pad|>", "p0", "p1", "p2", "p3", "p4", "step", "left", "right"]
    vocab = {w: i for i, w in enumerate(words)}
    vocab.update({f"tok{i}": len(words) + i for i in range(VOCAB - len(words))})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>", pad_token="<|pad|>")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=32, n_layer=2, n_embd=64, n_head=2, bos_token_id=0,
                        eos_token_id=0, pad_token_id=1)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def two_token_chain() -> list[Episode]:
    """Every chain transition, twice, with the actions spelled as two tokens."""
    return [Episode(ep.id, tuple(Turn(t.role, UTTERANCE.get(t.text, t.text) if t.role == "agent" else t.text,
                                      t.reward) for t in ep.turns), ep.done, ep.meta)
            for ep in chain_transitions(copies=2)]


def run_cli_chain(folder: Path, pretrain_steps: int = 150, bc_steps: int = 150, qsft_steps: int = 700,
                  extra: tuple[str, ...] = ()) -> list[dict]:
    """The user's path on the 50k-vocabulary model: `qsft pretrain` (skipped at 0 steps), `qsft train --algo
    bc`, `qsft train --algo qsft --behavior BC`, `qsft score`. Flags size the run (steps, batch, learning
    rate, context); the loss variant, threshold, support, bootstrap, tau and q_init stay at their defaults
    unless `extra` sets them. Returns one row per scored turn: state, action, q, Q*, q_hat per token.
    """
    model, data = folder / "gpt2-50k", folder / "chain.jsonl"
    save_gpt2_shaped_model(model)
    episodes = two_token_chain()
    save_episodes(data, episodes)
    sizing = ["--data", str(data), "--max_length", "16", "--per_device_train_batch_size", "16",
              "--learning_rate", "3e-3", "--seed", "0", "--save_strategy", "no", "--logging_steps", "100",
              "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true"]
    if pretrain_steps:
        assert main(["pretrain", "--model", str(model), "--out", str(folder / "base"),
                     "--max_steps", str(pretrain_steps), *sizing]) == 0
        model = folder / "base"
    sizing += ["--model", str(model), "--history_turns", "1"]
    assert main(["train", "--algo", "bc", "--out", str(folder / "bc"), "--max_steps", str(bc_steps), *sizing]) == 0
    assert main(["train", "--algo", "qsft", "--out", str(folder / "qsft"), "--behavior", str(folder / "bc"),
                 "--gamma", str(GAMMA), "--max_steps", str(qsft_steps), *sizing, *extra]) == 0
    scores = folder / "scores.jsonl"
    assert main(["score", "--run", str(folder / "qsft"), "--data", str(data), "--out", str(scores)]) == 0
    truth, action, start = q_star(GAMMA), {text: key for key, text in UTTERANCE.items()}, {}
    for ep in episodes:
        start[ep.id] = int(ep.turns[0].text[1:])
    rows = []
    for line in scores.read_text().splitlines():
        turn = json.loads(line)
        state, key = start[turn["episode_id"]], action[turn["text"]]
        rows.append({"state": state, "action": turn["text"], "q": turn["q"], "q_star": truth[(state, key)],
                     "q_hat": turn["q_hat"]})
    return rows
