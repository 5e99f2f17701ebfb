"""`qsft score`: a trained Q-SFT run as a critic of logged episodes.

For every agent token x_t, q_hat(x_<t, x_t) = p_theta(x_t|x_<t) / pi_beta(x_t|x_<t) (DESIGN §1.4).
A turn's value `q` is q_hat at its last token, the end-of-turn decision, whose Bellman target
is r + gamma V(s') — the Q-value of the whole utterance in the environment's MDP. (Inside an
utterance the targets chain through V of the next token, so at the fixed point every token of
a turn whose continuation the behavior model is sure of carries the same value.)

Sequences are built exactly as training built them (`tokenize_episodes` with the run's
`history_turns` and `max_length`), so q_hat is read at the states the model was trained on.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from qsft.data.collate import TokenMDPCollator
from qsft.data.episode import Episode
from qsft.data.io import load_episodes
from qsft.data.tokenize import TokenizedEpisode, TokenMDPConfig, tokenize_episodes
from qsft.decoding.extraction import align_vocab
from qsft.errors import ConfigError, ModelLoadError
from qsft.io import atomic_open
from qsft.models.loading import bos_token_id, load_tokenizer
from qsft.models.run_models import load_run_models
from qsft.run_info import RunInfo


@dataclass
class TurnScore:
    """The critic's view of one agent turn."""

    episode_id: str
    turn: int  # agent turn number within the episode (0-based)
    text: str
    reward: float
    q: float  # q_hat at the end-of-turn token
    tokens: list[str]  # the turn's tokens, end-of-turn token last
    q_hat: list[float]  # q_hat of each token
    p_theta: list[float]
    pi_beta: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


class Critic:
    """The Q-model and behavior model of a Q-SFT run, reading q_hat on token-MDP sequences."""

    def __init__(self, run_dir: str | os.PathLike, device: str = "cpu") -> None:
        self.run_dir = Path(run_dir)
        self.info = RunInfo.load(run_dir)
        if self.info.algo != "qsft":
            raise ConfigError(f"{run_dir} is a {self.info.algo!r} run; `qsft score` needs a Q-SFT run "
                              "(a Q-model and its behavior model)")
        q_model, behavior_model = load_run_models(run_dir)
        if behavior_model is None:
            raise ModelLoadError(f"{run_dir}/qsft.json names no behavior model")
        tokenizer = load_tokenizer(run_dir)
        self._use(q_model.to(device).eval(), behavior_model.to(device).eval(), tokenizer,
                  self.info.token_mdp_config(tokenizer), device)

    @classmethod
    def from_models(cls, q_model, behavior_model, tokenizer, layout: TokenMDPConfig, device: str = "cpu") -> Critic:
        """A critic over models in memory (e.g. the Q-model while it trains; used as given, not put in eval mode)."""
        critic = cls.__new__(cls)
        critic._use(q_model, behavior_model, tokenizer, layout, device)
        return critic

    def _use(self, q_model, behavior_model, tokenizer, layout: TokenMDPConfig, device: str) -> None:
        self.q_model, self.behavior_model, self.tokenizer, self.layout, self.device = (
            q_model, behavior_model, tokenizer, layout, device)
        self.collate = TokenMDPCollator(tokenizer.pad_token_id, bos_token_id(tokenizer))

    @torch.no_grad()
    def token_values(self, samples: list[TokenizedEpisode]) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p_theta, log pi_beta) of each sequence's own next tokens: [B, T] (position 0 is unused)."""
        batch = self.collate(samples)
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        q_logits = self.q_model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        behavior_logits = self.behavior_model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        behavior_logits = align_vocab(behavior_logits, q_logits.shape[-1])
        # logits[:, t - 1] is the decision for token t (DESIGN §1.1, 0-based)
        nxt = ids[:, 1:, None]
        log_p = F.log_softmax(q_logits[:, :-1], dim=-1).gather(-1, nxt).squeeze(-1)
        log_pi = F.log_softmax(behavior_logits[:, :-1], dim=-1).gather(-1, nxt).squeeze(-1)
        pad = log_p.new_zeros(ids.shape[0], 1)
        return torch.cat([pad, log_p], dim=1).cpu(), torch.cat([pad, log_pi], dim=1).cpu()

    def score_episodes(self, episodes: list[Episode], batch_size: int = 32) -> list[TurnScore]:
        by_id = {ep.id: ep for ep in episodes}
        samples = tokenize_episodes(episodes, self.tokenizer, self.layout)
        scores: list[TurnScore] = []
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            log_p, log_pi = self.token_values(chunk)
            for row, sample in enumerate(chunk):
                agent_turns = by_id[sample.episode_id].agent_turns
                for number, first, end in sample.turn_spans:
                    p = log_p[row, first:end].exp().tolist()
                    pi = log_pi[row, first:end].exp().tolist()
                    q_hat = (log_p[row, first:end] - log_pi[row, first:end]).exp().tolist()
                    scores.append(TurnScore(
                        sample.episode_id, number, agent_turns[number].text, agent_turns[number].reward,
                        q_hat[-1], self.tokenizer.convert_ids_to_tokens(sample.input_ids[first:end]), q_hat, p, pi))
        return scores


def score(run_dir: str | os.PathLike, data: str | os.PathLike | list[Episode], out: str | os.PathLike | None = None,
          device: str = "cpu", batch_size: int = 32) -> list[TurnScore]:
    """Score every agent turn of `data` with the run's critic; `out` writes them as JSONL (atomically)."""
    episodes = data if isinstance(data, list) else load_episodes(data)
    scores = Critic(run_dir, device).score_episodes(episodes, batch_size)
    if out is not None:
        with atomic_open(out, "w") as handle:
            for turn in scores:
                handle.write(json.dumps(turn.to_dict(), ensure_ascii=False) + "\n")
    return scores
