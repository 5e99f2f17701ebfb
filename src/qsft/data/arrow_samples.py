"""Token-MDP samples as a memory-mapped Arrow table, read lazily by the trainer (the Arrow backend).

`tokenize_table` runs `tokenize_episode` over an `EpisodeTable` in a cached multi-process `datasets.map` that
writes one row per training sample. Rows store only what a `TokenizedEpisode` cannot rebuild:

    episode_id  input_ids  next_input_ids  span_turn/span_start/span_end (turn_spans)
    end_reward  end_discount  end_next_state   (reward, discount, next_state_index at each turn's last token)
    return_to_go                                (on the trained tokens only)

Everything else follows from the token MDP's layout (DESIGN §1.1): inside an agent turn, reward 0, discount
1, next state t; outside, action mask 0, reward 0, discount 0, next state TERMINAL, return-to-go 0.
`decode_sample` rebuilds the exact `TokenizedEpisode` the list path makes (tests/data/test_arrow.py), so
`ArrowTokenMDPDataset` feeds the same collator and Python holds only the samples of a batch.
"""

from __future__ import annotations

from dataclasses import asdict

import datasets
import numpy as np
import pyarrow as pa
from torch.utils.data import Dataset

from qsft.data import arrow_episodes, tokenize
from qsft.data.arrow_episodes import ArrowTable, EpisodeTable, episodes_from_columns, tokenizer_key
from qsft.data.arrow_map import code_version
from qsft.data.rewards import transform_rewards
from qsft.data.support import agent_bigrams as support_bigrams
from qsft.data.tokenize import TERMINAL, SegmentEncoder, TokenizedEpisode, TokenMDPConfig

TOKENIZE_BATCH, REDUCE_BATCH = 64, 4096
CODE = arrow_episodes.CODE + code_version(__file__)
SPAN_COLUMNS = ("span_turn", "span_start", "span_end", "end_reward", "end_discount", "end_next_state")


def sample_features(vocab_size: int) -> datasets.Features:
    ids = datasets.List(datasets.Value("uint16" if vocab_size <= 1 << 16 else "int32"))
    int32, float64 = datasets.List(datasets.Value("int32")), datasets.List(datasets.Value("float64"))
    return datasets.Features({
        "episode_id": datasets.Value("string"), "input_ids": ids, "next_input_ids": ids,
        "span_turn": int32, "span_start": int32, "span_end": int32, "end_reward": float64, "end_discount": float64,
        "end_next_state": int32, "return_to_go": float64})


def tokenize_table(episodes: EpisodeTable, tokenizer, cfg: TokenMDPConfig, transform: tuple | None = None,
                   dummy_token_id: int | None = None) -> ArrowTable:
    """`tokenize_episodes` of the whole table (after `transform_rewards(*transform)` when given), as rows.

    `cfg.reserve` must be set (the list path's default, the longest reply, is `EpisodeTable.longest_reply`).
    """
    assert cfg.reserve is not None, "resolve the reply reserve first (EpisodeTable.longest_reply)"
    depends_on = (tokenizer_key(tokenizer), asdict(cfg), transform, dummy_token_id, CODE)
    features = sample_features(len(tokenizer))
    rows = episodes.map(_tokenize_batch, name="samples", depends_on=depends_on, batch_size=TOKENIZE_BATCH,
                        features=features, remove_columns=episodes.rows.column_names,
                        fn_kwargs={"encode": SegmentEncoder(tokenizer), "cfg": cfg, "transform": transform,
                                   "dummy_token_id": dummy_token_id, "schema": features.arrow_schema},
                        desc="qsft: tokenizing")
    return ArrowTable(rows, arrow_episodes.fingerprint(episodes.key, "samples", depends_on), episodes.cache_dir,
                      episodes.num_proc)


def sample_columns(samples: list[TokenizedEpisode]) -> dict[str, list]:
    """Rows of `samples` in the compact layout of this module's docstring."""
    columns = ("episode_id", "input_ids", "next_input_ids", "return_to_go", *SPAN_COLUMNS)
    out: dict[str, list] = {name: [] for name in columns}
    rows = [out[name].append for name in columns]
    for s in samples:
        numbers, starts, ends = zip(*s.turn_spans)
        values = (s.episode_id, s.input_ids, s.next_input_ids,
                  [g for start, end in zip(starts, ends) for g in s.return_to_go[start:end]],
                  list(numbers), list(starts), list(ends), [s.reward[t - 1] for t in ends],
                  [s.discount[t - 1] for t in ends], [s.next_state_index[t - 1] for t in ends])
        for append, value in zip(rows, values):
            append(value)
    return out


def decode_sample(row: dict) -> TokenizedEpisode:
    """The `TokenizedEpisode` a row stores (the inverse of `sample_columns`)."""
    length = len(row["input_ids"])
    sample = TokenizedEpisode(row["episode_id"], row["input_ids"], [0] * length, [0.0] * length, [0.0] * length,
                              [TERMINAL] * length, row["next_input_ids"], return_to_go=[0.0] * length)
    returns = iter(row["return_to_go"])
    for number, start, end, reward, discount, next_state in zip(*(row[name] for name in SPAN_COLUMNS)):
        sample.turn_spans.append((number, start, end))
        for t in range(start, end):
            sample.action_mask[t], sample.return_to_go[t] = 1, next(returns)
            sample.discount[t], sample.next_state_index[t] = 1.0, t
        sample.reward[end - 1], sample.discount[end - 1], sample.next_state_index[end - 1] = reward, discount, next_state
    return sample


class BestReturns:
    """The best return-to-go logged after each trained token prefix (`--mc_lower_bound best`), by prefix key."""

    def __init__(self, best: dict[int, float]) -> None:
        self.keys = np.array(sorted(best), dtype=np.int64)
        self.values = np.array([best[k] for k in sorted(best)], dtype=np.float64)

    def apply(self, sample: TokenizedEpisode) -> TokenizedEpisode:
        """`tokenize.best_logged_returns` for one sample: its trained tokens' returns raised to the best."""
        for t, key in tokenize.trained_prefix_keys(sample):
            sample.return_to_go[t] = float(self.values[np.searchsorted(self.keys, key)])
        return sample


class ArrowTokenMDPDataset(Dataset):
    """Samples read from the memory-mapped table on demand: what `TokenMDPDataset` is for the list path."""

    def __init__(self, table: ArrowTable, best: BestReturns | None = None) -> None:
        self.table, self.best = table, best

    @property
    def samples(self) -> ArrowTokenMDPDataset:
        """A sequence of `TokenizedEpisode`s, like `TokenMDPDataset.samples` (read lazily)."""
        return self

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> TokenizedEpisode:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        return self._decode(self.table.rows[int(index)])

    def __getitems__(self, indices: list[int]) -> list[TokenizedEpisode]:
        """A batch in one read (torch's DataLoader calls this)."""
        return self._rows(self.table.rows[list(indices)])

    def __iter__(self):
        for batch in self.table.rows.iter(batch_size=1024):
            yield from self._rows(batch)

    def _rows(self, columns: dict[str, list]) -> list[TokenizedEpisode]:
        return [self._decode(dict(zip(columns, values))) for values in zip(*columns.values())]

    def _decode(self, row: dict) -> TokenizedEpisode:
        sample = decode_sample(row)
        return self.best.apply(sample) if self.best is not None else sample


def best_returns(samples: ArrowTable) -> BestReturns:
    """`--mc_lower_bound best` over the whole table: per batch the best return of each prefix key, merged."""
    out = samples.reduce(_best_returns, name="best-returns", depends_on=(CODE,), batch_size=REDUCE_BATCH,
                         input_columns=["input_ids", "span_start", "span_end", "return_to_go"])
    best: dict[int, float] = {}
    for keys, values in zip(out["keys"], out["values"]):
        for key, value in zip(keys, values):
            best[key] = max(best.get(key, value), value)
    return BestReturns(best)


def agent_bigrams(samples: ArrowTable) -> set[tuple[int, int]]:
    """`qsft.data.support.agent_bigrams` over the whole table."""
    out = samples.reduce(_agent_bigrams, name="bigrams", depends_on=(CODE,), batch_size=REDUCE_BATCH,
                         input_columns=["input_ids", "span_start", "span_end"])
    return {(p, s) for ps, ss in zip(out["predecessors"], out["successors"]) for p, s in zip(ps, ss)}


def _tokenize_batch(batch: dict[str, list], *, encode: SegmentEncoder, cfg: TokenMDPConfig, transform: tuple | None,
                    dummy_token_id: int | None, schema: pa.Schema) -> pa.Table:
    episodes = episodes_from_columns(batch)
    if transform is not None:
        episodes = transform_rewards(episodes, *transform)
    samples = [sample for ep in episodes for sample in tokenize.tokenize_episode(ep, encode, cfg)]
    if dummy_token_id is not None:
        tokenize.check_no_dummy_token(samples, dummy_token_id)
    return pa.Table.from_pydict(sample_columns(samples), schema=schema)  # typed here, in C++: no per-value casts


def _trained(input_ids: list[int], starts: list[int], ends: list[int]) -> TokenizedEpisode:
    """A sample with its tokens and action mask (all the prefix keys and bigrams read)."""
    mask = [0] * len(input_ids)
    for start, end in zip(starts, ends):
        mask[start:end] = [1] * (end - start)
    return TokenizedEpisode("", input_ids, mask, [], [], [])


def _best_returns(input_ids: list, starts: list, ends: list, returns: list) -> dict[str, list]:
    best: dict[int, float] = {}
    for ids, s, e, g in zip(input_ids, starts, ends, returns):
        trained = _trained(ids, s, e)
        for (_, key), value in zip(tokenize.trained_prefix_keys(trained), g):
            best[key] = max(best.get(key, value), value)
    return {"keys": [list(best)], "values": [list(best.values())]}


def _agent_bigrams(input_ids: list, starts: list, ends: list) -> dict[str, list]:
    pairs = support_bigrams(_trained(ids, s, e) for ids, s, e in zip(input_ids, starts, ends))
    return {"predecessors": [[p for p, _ in pairs]], "successors": [[s for _, s in pairs]]}

