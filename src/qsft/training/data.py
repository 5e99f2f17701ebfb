"""Episodes -> training dataset for a method: reward transform (Q-SFT), selection (filtered BC), tokens.

Two backends hold the data (`data_backend`, docs/episode_format.md "Data at scale"): `memory`, a list of
`Episode`s tokenized into a list of samples; `arrow`, an `EpisodeTable` tokenized into memory-mapped Arrow
rows that the trainer reads batch by batch. Every function here takes either and gives the same samples.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from pathlib import Path

from qsft.data.arrow_episodes import ArrowUnsupportedError, EpisodeTable, load_episode_table
from qsft.data.arrow_samples import ArrowTokenMDPDataset, agent_bigrams, best_returns, tokenize_table
from qsft.data.collate import TokenMDPDataset
from qsft.data.episode import Episode
from qsft.data.io import load_episodes, open_parquet
from qsft.data.rewards import RewardReport, apply_reward_transform
from qsft.data.support import DataSupport
from qsft.data.tokenize import (
    SegmentEncoder,
    TokenMDPConfig,
    best_logged_returns,
    check_no_dummy_token,
    longest_reply,
    tokenize_episodes,
)
from qsft.models.loading import bos_token_id

Episodes = list[Episode] | EpisodeTable
ARROW_ALGOS = ("bc", "filtered_bc", "qsft")  # pretrain, ilql and mc read episode lists
# `data_backend: auto` reads files from this size with the arrow backend; it was already the faster one on 10^3 maze
# episodes (15 MB; benchmarks/data_scale.py), but tests and small runs keep the cache-free memory backend
AUTO_ARROW_BYTES = 64 << 20


def token_mdp_config(tokenizer, config, gamma: float = 1.0) -> TokenMDPConfig:
    return TokenMDPConfig(gamma=gamma, max_length=config.max_length, bos_token_id=bos_token_id(tokenizer),
                          eot_token_id=tokenizer.eos_token_id, truncation=config.truncation,
                          history_turns=config.history_turns, reserve=config.reply_tokens)


def load_training_episodes(data: str | os.PathLike | list[Episode], algo: str, config) -> tuple[Episodes, str]:
    """(the episodes, the backend that holds them): `config.data_backend`, where 'auto' picks arrow for a data file
    of `AUTO_ARROW_BYTES` or more when `algo` can use it, and falls back to memory for data with images."""
    if isinstance(data, list):
        if config.data_backend == "arrow":
            raise ArrowUnsupportedError("data_backend arrow reads a data file or folder, not a list of episodes")
        return data, "memory"
    if config.data_backend == "arrow" and algo not in ARROW_ALGOS:
        raise ArrowUnsupportedError(f"data_backend arrow works with {', '.join(ARROW_ALGOS)}; --algo {algo} reads "
                                    "the episodes into memory: set data_backend memory")
    if config.data_backend == "arrow" or (config.data_backend == "auto" and algo in ARROW_ALGOS
                                          and data_bytes(data) >= AUTO_ARROW_BYTES):
        try:
            with config.main_process_first(desc="arrow episode table"):  # the others then read its files
                return load_episode_table(data, config.data_cache_dir, config.data_num_proc), "arrow"
        except ArrowUnsupportedError:
            if config.data_backend == "arrow":
                raise
    return load_episodes(data), "memory"


def data_bytes(path: str | os.PathLike) -> int:
    """The size of a data file or folder on disk, a Parquet file counted uncompressed."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    if path.suffix == ".parquet":
        meta = open_parquet(path).metadata
        return sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return path.stat().st_size if path.is_file() else 0


def tiny_tokenizer_texts(episodes: Episodes, action_tokens: bool):
    """(every turn text, the agent texts or None): what `build_tiny_tokenizer` is built from; for a table, text
    counts and the distinct agent texts (the tokenizer only needs those)."""
    if isinstance(episodes, EpisodeTable):
        counts, actions = episodes.text_counts()
        return counts, actions if action_tokens else None
    actions = [t.text for ep in episodes for t in ep.agent_turns] if action_tokens else None
    return (t.text for ep in episodes for t in ep.turns), actions


def resolve_reply_tokens(episodes: Episodes, tokenizer, config, vision=None) -> int:
    """`config.reply_tokens`, set to the data's longest agent turn when unset (recorded with the run)."""
    if config.reply_tokens is None:
        encode = SegmentEncoder(tokenizer, vision)
        config.reply_tokens = (episodes.longest_reply(encode) if isinstance(episodes, EpisodeTable)
                               else longest_reply(episodes, encode))
    return config.reply_tokens


def top_indices(returns: list[float], top: float) -> list[int]:
    """Filtered BC's data: the ceil(top * N) highest returns' positions, ties in file order, sorted."""
    keep = max(1, math.ceil(round(top * len(returns), 9)))  # 0.28 * 25 = 7.000000000000001 means 7
    ranked = sorted(range(len(returns)), key=lambda i: -returns[i])
    return sorted(ranked[:keep])


def select_top_episodes(episodes: Episodes, top: float) -> Episodes:
    """The ceil(top * N) episodes with the highest undiscounted return (stable order)."""
    if isinstance(episodes, EpisodeTable):
        return episodes.select(top_indices(episodes.returns(), top))
    return [episodes[i] for i in top_indices([ep.total_return for ep in episodes], top)]


def check_rewards(episodes: Episodes, config) -> RewardReport:
    """The reward transform's errors, if any, before anything trains; its report."""
    with _main_first(episodes, config):
        if isinstance(episodes, EpisodeTable):
            return episodes.reward_report(config.reward_transform, config.gamma)
        return apply_reward_transform(episodes, config.reward_transform, config.gamma)[1]


def sft_dataset(episodes: Episodes, tokenizer, config, vision=None) -> TokenMDPDataset | ArrowTokenMDPDataset:
    """`vision`: a VLM's `qsft.data.images.VisionInputs` (image placeholders in the tokens), else None."""
    with _main_first(episodes, config):
        resolve_reply_tokens(episodes, tokenizer, config, vision)
        if isinstance(episodes, EpisodeTable):
            return ArrowTokenMDPDataset(tokenize_table(episodes, tokenizer, token_mdp_config(tokenizer, config)))
        return TokenMDPDataset(tokenize_episodes(episodes, tokenizer, token_mdp_config(tokenizer, config), vision))


def qsft_dataset(episodes: Episodes, tokenizer, config, dummy_token_id: int | None,
                 reward_bounds: tuple[float | None, float | None] = (None, None), vision=None,
                 best_returns: bool = False) -> tuple[TokenMDPDataset | ArrowTokenMDPDataset, RewardReport]:
    """`best_returns`: each agent token's return-to-go raised to the best logged after its prefix
    (`--mc_lower_bound best`)."""
    if isinstance(episodes, EpisodeTable):
        with _main_first(episodes, config):
            return _arrow_qsft_dataset(episodes, tokenizer, config, dummy_token_id, reward_bounds, best_returns)
    transformed, report = apply_reward_transform(episodes, config.reward_transform, config.gamma, *reward_bounds)
    resolve_reply_tokens(episodes, tokenizer, config, vision)
    samples = tokenize_episodes(transformed, tokenizer, token_mdp_config(tokenizer, config, config.gamma), vision)
    if best_returns:
        best_logged_returns(samples)
    if dummy_token_id is not None:
        check_no_dummy_token(samples, dummy_token_id)
    return TokenMDPDataset(samples), report


def _arrow_qsft_dataset(episodes: EpisodeTable, tokenizer, config, dummy_token_id: int | None,
                        reward_bounds: tuple, best: bool) -> tuple[ArrowTokenMDPDataset, RewardReport]:
    report = episodes.reward_report(config.reward_transform, config.gamma, *reward_bounds)
    resolve_reply_tokens(episodes, tokenizer, config)
    transform = (config.reward_transform, config.gamma, report.low, report.high)
    samples = tokenize_table(episodes, tokenizer, token_mdp_config(tokenizer, config, config.gamma), transform,
                             dummy_token_id)
    return ArrowTokenMDPDataset(samples, best_returns(samples) if best else None), report


def data_support(dataset: TokenMDPDataset | ArrowTokenMDPDataset, config) -> DataSupport:
    """`--support data`: the agent bigrams of the training samples."""
    if isinstance(dataset, ArrowTokenMDPDataset):
        with config.main_process_first(desc="arrow support"):
            return DataSupport.from_pairs(agent_bigrams(dataset.table))
    return DataSupport.from_samples(dataset.samples)


def _main_first(episodes: Episodes, config):
    """Arrow passes write cache files: the main process first, the others then read them (no-op otherwise)."""
    return config.main_process_first(desc="arrow tables") if isinstance(episodes, EpisodeTable) else nullcontext()
