"""Episodes as a memory-mapped Arrow table: the data of the Arrow backend (`data_backend: arrow`).

`load_episode_table(path)` reads a JSONL file, a Parquet file, a `save_to_disk` folder or a local Hub-format
folder once, validating every row with the same `parse_episode` as `load_episodes` (so errors are the same
one-line "file, line/row, episode, field" messages), into a table with one row per episode:

    id  roles [str]  texts [str]  rewards [float64]  done  meta (JSON text)  total_return

Every pass over it is a cached, chunked, multi-process `datasets.map` (`qsft.data.arrow_map`). Whole-data
facts the list path computes with one Python loop (the tiny tokenizer's vocabulary, the longest reply, the
reward statistics) are reductions here: one summary row per batch, merged in data order.
A JSONL file is not copied: an index of its lines' byte offsets is, and the parse reads the lines back.
Episodes with images stay on the memory backend (`ArrowUnsupportedError`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc

from qsft.data import io, rewards, tokenize
from qsft.data.arrow_map import cached_map, code_version, default_cache_dir, default_num_proc, fingerprint
from qsft.data.episode import Episode, Turn
from qsft.data.rewards import RewardReport, RewardStats
from qsft.errors import ConfigError, EpisodeFormatError

EPISODE_FEATURES = datasets.Features({
    "id": datasets.Value("string"), "roles": datasets.List(datasets.Value("string")),
    "texts": datasets.List(datasets.Value("string")), "rewards": datasets.List(datasets.Value("float64")),
    "done": datasets.Value("bool"), "meta": datasets.Value("string"), "total_return": datasets.Value("float64")})
INDEX_FEATURES = datasets.Features({name: datasets.Value("int64") for name in ("offset", "length", "line", "index")})
PARSE_BATCH, REDUCE_BATCH = 256, 1024
CODE = code_version(io.__file__, rewards.__file__, tokenize.__file__, __file__)


class ArrowUnsupportedError(ConfigError):
    """Data or a method the Arrow backend does not handle; `data_backend: auto` falls back to memory."""


@dataclass
class ArrowTable:
    """A `datasets.Dataset` plus what its cached passes need: a key naming its contents, where files go, workers."""

    rows: datasets.Dataset
    key: str
    cache_dir: Path
    num_proc: int

    def __len__(self) -> int:
        return len(self.rows)

    def map(self, function, *, name: str, depends_on: tuple, batch_size: int, **map_kwargs) -> datasets.Dataset:
        """`cached_map` of the rows, cached under a key made of this table's and `depends_on`."""
        return cached_map(self.rows, function, name=name, key=fingerprint(self.key, name, depends_on, CODE),
                          cache_dir=self.cache_dir, num_proc=self.num_proc, batch_size=batch_size, **map_kwargs)

    def reduce(self, function, *, name: str, depends_on: tuple, batch_size: int, **map_kwargs) -> dict[str, list]:
        """The summary rows `function` returns, one per batch (data order), as columns."""
        return self.map(function, name=name, depends_on=depends_on, batch_size=batch_size,
                        remove_columns=self.rows.column_names, **map_kwargs).to_dict()


@dataclass
class EpisodeTable(ArrowTable):
    source: str = ""

    def returns(self) -> list[float]:
        """Each episode's undiscounted return (`Episode.total_return`), in order."""
        return self.rows.with_format("arrow", columns=["total_return"])[:]["total_return"].to_pylist()

    def select(self, indices: list[int]) -> EpisodeTable:
        """The episodes at `indices` (no copy: an index over the same files)."""
        return replace(self, rows=self.rows.select(indices), key=fingerprint(self.key, "select", indices))

    def text_counts(self) -> tuple[Counter, set[str]]:
        """(how often each turn text occurs, the distinct agent texts): the tiny tokenizer's inputs."""
        out = self.reduce(_count_texts, name="texts", depends_on=(), batch_size=REDUCE_BATCH,
                          input_columns=["roles", "texts"])
        counts: Counter = Counter()
        for texts, numbers in zip(out["texts"], out["counts"]):
            counts.update(dict(zip(texts, numbers)))
        return counts, {text for actions in out["actions"] for text in actions}

    def longest_reply(self, encode: tokenize.SegmentEncoder) -> int:
        """`tokenize.longest_reply` over the whole table."""
        out = self.reduce(_longest_reply, name="reply", depends_on=(tokenizer_key(encode.tokenizer),),
                          batch_size=REDUCE_BATCH, input_columns=["roles", "texts"], fn_kwargs={"encode": encode})
        return max(out["longest"])

    def reward_report(self, spec: str, gamma: float, low: float | None = None,
                      high: float | None = None) -> RewardReport:
        """`apply_reward_transform`'s report and errors, without holding the episodes: statistics merged in data
        order, then every batch transformed with the resulting bounds (raising what the list path raises)."""
        columns = ["id", "roles", "rewards", "done", "meta"]
        out = self.reduce(_reward_stats, name="reward-stats", depends_on=(gamma,), batch_size=REDUCE_BATCH,
                          input_columns=columns, fn_kwargs={"gamma": gamma})
        batches = [RewardStats(**{**s, "max_partial_at": _tuple(s["max_partial_at"]),
                                  "first_negative": _tuple(s["first_negative"])}) for s in map(json.loads, out["stats"])]
        stats = batches[0]
        for later in batches[1:]:
            stats = stats.merge(later)
        report = rewards.reward_report(stats, spec, gamma, low, high)
        self.reduce(_check_rewards, name="reward-check", depends_on=(spec, gamma, report.low, report.high),
                    batch_size=REDUCE_BATCH, input_columns=columns,
                    fn_kwargs={"transform": (spec, gamma, report.low, report.high)})
        return report


def load_episode_table(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                       num_proc: int | None = None) -> EpisodeTable:
    """The episodes of a data file or folder as an `EpisodeTable` (cached: a second call reads the files back)."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise EpisodeFormatError("file not found", source=source)
    key = fingerprint("episodes", str(path.resolve()), _stamp(path))
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if path.is_file() and path.suffix not in io.TABLE_SUFFIXES:  # JSONL: an index of the lines, parsed from the file
        with open(path, "rb") as handle:
            if all(map(_blank, handle)):  # (`datasets` cannot make an empty table from a generator)
                raise EpisodeFormatError("no episodes found", source=source)
        raw = datasets.Dataset.from_generator(_jsonl_index, gen_kwargs={"path": source}, cache_dir=str(cache_dir),
                                              features=INDEX_FEATURES, fingerprint=fingerprint(key, "index", CODE))
        function, kwargs, extra = _parse_jsonl, {"path": source}, {}
    else:
        if path.is_file():
            io.open_parquet(path)  # the list path's error for an unreadable file
            raw = datasets.Dataset.from_parquet(source, cache_dir=str(cache_dir))
        else:
            raw = io.dataset_rows(path)
        function, kwargs = _parse_rows, {"source": source, "image_dir": str(path.parent if path.is_file() else path)}
        extra = {"with_indices": True, "with_offset": True}
    if len(raw) == 0:
        raise EpisodeFormatError("no episodes found", source=source)
    table = ArrowTable(raw, key, cache_dir, num_proc or default_num_proc())
    rows = table.map(function, name="episodes", depends_on=(), batch_size=PARSE_BATCH, features=EPISODE_FEATURES,
                     remove_columns=raw.column_names, fn_kwargs=kwargs, desc="qsft: reading episodes", **extra)
    _check_unique_ids(rows, source)
    return EpisodeTable(rows, fingerprint(key, "rows", CODE), cache_dir, table.num_proc, source)


def episodes_from_columns(batch: dict[str, list]) -> list[Episode]:
    """The `Episode`s of a batch of table rows (what `episode_columns` stored)."""
    return [Episode(episode_id, tuple(Turn(r, t, w) for r, t, w in zip(roles, texts, rewards_)), done,
                    json.loads(meta) if meta else {})
            for episode_id, roles, texts, rewards_, done, meta in
            zip(batch["id"], batch["roles"], batch["texts"], batch["rewards"], batch["done"], batch["meta"])]


def episode_columns(episodes: list[Episode]) -> dict[str, list]:
    if any(t.image is not None for ep in episodes for t in ep.turns):
        raise ArrowUnsupportedError("episodes with images (vision-language data) are read by the memory backend "
                                    "only: set data_backend memory")
    return {"id": [ep.id for ep in episodes], "roles": [[t.role for t in ep.turns] for ep in episodes],
            "texts": [[t.text for t in ep.turns] for ep in episodes],
            "rewards": [[t.reward for t in ep.turns] for ep in episodes], "done": [ep.done for ep in episodes],
            "meta": [json.dumps(ep.meta, ensure_ascii=False, default=str) if ep.meta else "" for ep in episodes],
            "total_return": [ep.total_return for ep in episodes]}


def tokenizer_key(tokenizer) -> str:
    """What identifies a tokenizer's output: its serialised vocabulary and rules (fast tokenizers) and size."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    content = backend.to_str() if backend is not None else datasets.fingerprint.Hasher.hash(tokenizer)
    return fingerprint(type(tokenizer).__name__, content, len(tokenizer) if hasattr(tokenizer, "__len__") else None)


def _stamp(path: Path) -> list:
    """Size and modification time of the file, or of every file under the folder."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(p.relative_to(path)) if p != path else "", p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _jsonl_index(path: str):
    """One row per non-blank line of a JSONL file: where it is, its line number, its episode number."""
    with open(path, "rb") as handle:
        offset = index = 0
        for line, raw in enumerate(handle, start=1):
            if not _blank(raw):
                yield {"offset": offset, "length": len(raw), "line": line, "index": index}
                index += 1
            offset += len(raw)


def _blank(raw: bytes) -> bool:
    """`parse_jsonl_line` returns None for it (undecodable lines are not blank: parsing reports them)."""
    stripped = raw.strip()
    if not stripped or stripped[:1] == b"{":
        return not stripped
    try:
        return not raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


def _parse_jsonl(batch: dict[str, list], *, path: str) -> dict[str, list]:
    first = batch["offset"][0]
    with open(path, "rb") as handle:
        handle.seek(first)
        block = handle.read(batch["offset"][-1] + batch["length"][-1] - first)
    return episode_columns([
        io.parse_jsonl_line(block[offset - first:offset - first + length], Path(path), line, index)
        for offset, length, line, index in zip(batch["offset"], batch["length"], batch["line"], batch["index"])])


def _parse_rows(batch: dict[str, list], indices: list[int], *, offset: int, source: str,
                image_dir: str) -> dict[str, list]:
    names = list(batch)
    return episode_columns([
        io.parse_episode(io.drop_nulls(dict(zip(names, values))), source=source, row=offset + i, index=offset + i,
                         image_dir=image_dir)
        for i, values in zip(indices, zip(*batch.values()))])


def _check_unique_ids(rows: datasets.Dataset, source: str) -> None:
    """`load_episodes`' error for the first repeated id, in file order (reads the id column only)."""
    ids = rows.data.column("id")
    if pc.count_distinct(ids).as_py() == len(ids):
        return
    counts = pc.value_counts(ids)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    seen: set[str] = set()
    for i in np.flatnonzero(pc.is_in(ids, value_set=repeated).to_numpy(zero_copy_only=False)):
        episode_id = ids[int(i)].as_py()
        if episode_id in seen:
            raise io.duplicate_id_error(source, episode_id)
        seen.add(episode_id)


def _agent_rewards(ids, roles, rewards_, done, meta) -> list[Episode]:
    """Episodes with their rewards, roles, ends and meta but no texts: what the reward transforms read."""
    return [Episode(i, tuple(Turn(r, "", w) for r, w in zip(rs, ws)), d, json.loads(m) if m else {})
            for i, rs, ws, d, m in zip(ids, roles, rewards_, done, meta)]


def _count_texts(roles: list, texts: list) -> dict[str, list]:
    counts = Counter(t for ts in texts for t in ts)
    actions = {t for rs, ts in zip(roles, texts) for r, t in zip(rs, ts) if r == "agent"}
    return {"texts": [list(counts)], "counts": [list(counts.values())], "actions": [sorted(actions)]}


def _longest_reply(roles: list, texts: list, *, encode: tokenize.SegmentEncoder) -> dict[str, list]:
    agents = [Episode("", tuple(Turn(r, t) for r, t in zip(rs, ts) if r == "agent")) for rs, ts in zip(roles, texts)]
    return {"longest": [tokenize.longest_reply(agents, encode)]}


def _reward_stats(*columns, gamma: float) -> dict[str, list]:
    return {"stats": [json.dumps(asdict(rewards.reward_stats(_agent_rewards(*columns), gamma)))]}


def _check_rewards(*columns, transform: tuple) -> dict[str, list]:
    return {"checked": [len(rewards.transform_rewards(_agent_rewards(*columns), *transform))]}


def _tuple(value):
    return tuple(value) if value is not None else None
