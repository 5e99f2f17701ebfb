"""Episodes -> training dataset for a method: reward transform (Q-SFT), selection (filtered BC), tokens."""

from __future__ import annotations

import math

from qsft.data.collate import TokenMDPDataset
from qsft.data.episode import Episode
from qsft.data.rewards import RewardReport, apply_reward_transform
from qsft.data.tokenize import (
    SegmentEncoder,
    TokenMDPConfig,
    best_logged_returns,
    longest_reply,
    tokenize_episodes,
)
from qsft.errors import ConfigError
from qsft.models.loading import bos_token_id


def token_mdp_config(tokenizer, config, gamma: float = 1.0) -> TokenMDPConfig:
    return TokenMDPConfig(gamma=gamma, max_length=config.max_length, bos_token_id=bos_token_id(tokenizer),
                          eot_token_id=tokenizer.eos_token_id, truncation=config.truncation,
                          history_turns=config.history_turns, reserve=config.reply_tokens)


def resolve_reply_tokens(episodes: list[Episode], tokenizer, config, vision=None) -> int:
    """`config.reply_tokens`, set to the data's longest agent turn when unset (recorded with the run)."""
    if config.reply_tokens is None:
        config.reply_tokens = longest_reply(episodes, SegmentEncoder(tokenizer, vision))
    return config.reply_tokens


def select_top_episodes(episodes: list[Episode], top: float) -> list[Episode]:
    """Filtered BC's data: the ceil(top * N) episodes with the highest undiscounted return (stable order)."""
    keep = max(1, math.ceil(round(top * len(episodes), 9)))  # 0.28 * 25 = 7.000000000000001 means 7
    ranked = sorted(range(len(episodes)), key=lambda i: -episodes[i].total_return)
    chosen = sorted(ranked[:keep])
    return [episodes[i] for i in chosen]


def sft_dataset(episodes: list[Episode], tokenizer, config, vision=None) -> TokenMDPDataset:
    """`vision`: a VLM's `qsft.data.images.VisionInputs` (image placeholders in the tokens), else None."""
    resolve_reply_tokens(episodes, tokenizer, config, vision)
    return TokenMDPDataset(tokenize_episodes(episodes, tokenizer, token_mdp_config(tokenizer, config), vision))


def qsft_dataset(episodes: list[Episode], tokenizer, config, dummy_token_id: int | None,
                 reward_bounds: tuple[float | None, float | None] = (None, None), vision=None,
                 best_returns: bool = False) -> tuple[TokenMDPDataset, RewardReport]:
    """`best_returns`: each agent token's return-to-go raised to the best logged after its prefix
    (`--mc_lower_bound best`)."""
    transformed, report = apply_reward_transform(episodes, config.reward_transform, config.gamma, *reward_bounds)
    resolve_reply_tokens(episodes, tokenizer, config, vision)
    samples = tokenize_episodes(transformed, tokenizer, token_mdp_config(tokenizer, config, config.gamma), vision)
    if best_returns:
        best_logged_returns(samples)
    if dummy_token_id is not None:
        for sample in samples:
            if any(m and t == dummy_token_id for t, m in zip(sample.input_ids, sample.action_mask)):
                raise ConfigError(f"episode {sample.episode_id!r}: an agent utterance contains the dummy token "
                                  f"(id {dummy_token_id}); choose another --dummy_token")
    return TokenMDPDataset(samples), report
