"""`datasets.Dataset.map` for data too big to hold: in contiguous chunks, in worker processes, cached on disk.

Every pass of the Arrow backend (docs/episode_format.md, "Data at scale") is a batched `map` whose output is
an Arrow file named by a fingerprint of everything it depends on (input, settings, tokenizer, qsft's code), so
a second run with the same inputs reads the files back instead of recomputing them. The map runs chunk by
chunk (~`CHUNK_BYTES` of input each) in `num_proc` worker processes: the main process never reads the
memory-mapped input, and each worker only pages in its share of one chunk, so peak memory stays bounded by
the chunk size whatever the size of the data.

A reduction (`reduce_batches`) is a map whose function returns one summary row per batch: the main process
then reads only those rows.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets

CHUNK_BYTES = 1 << 30  # input bytes per chunk: its workers page in at most this much of the memory-mapped input
CACHE_SUBDIR = "qsft"


def default_cache_dir() -> Path:
    """Where the Arrow backend's files go unless `data_cache_dir` says otherwise: the `datasets` cache
    (`HF_DATASETS_CACHE`, by default ~/.cache/huggingface/datasets), folder `qsft/`."""
    return Path(datasets.config.HF_DATASETS_CACHE) / CACHE_SUBDIR


def default_num_proc() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (what a cached file depends on)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def code_version(*files: str) -> str:
    """A hash of source files: cached files made by other code are not reused."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(Path(file).read_bytes())
    return digest.hexdigest()[:16]


def cached_map(dataset: datasets.Dataset, function: Callable, *, name: str, key: str, cache_dir: Path,
               num_proc: int, batch_size: int, with_offset: bool = False, **map_kwargs) -> datasets.Dataset:
    """`dataset.map(function, batched=True, **map_kwargs)` chunk by chunk, cached in
    `cache_dir/{name}-{key}-{chunk}.arrow`; `key` must change whenever the output would.

    `with_offset`: the function also receives `offset=`, the row number of the chunk's first row (with
    `with_indices`, the indices it gets count from the chunk's start).
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    rows = chunk_rows(dataset)
    fn_kwargs = map_kwargs.pop("fn_kwargs", None) or {}
    parts = []
    for chunk, start in enumerate(range(0, len(dataset), rows)):
        part = dataset.select(range(start, min(start + rows, len(dataset))))
        parts.append(part.map(
            functools.partial(_without_gc, function), batched=True, batch_size=batch_size,
            fn_kwargs={**fn_kwargs, "offset": start} if with_offset else fn_kwargs,
            num_proc=_workers(len(part), batch_size, num_proc), new_fingerprint=f"{key}-{chunk}",
            cache_file_name=str(cache_dir / f"{name}-{key}-{chunk:05d}.arrow"), **map_kwargs))
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def reduce_batches(dataset: datasets.Dataset, function: Callable, *, name: str, key: str, cache_dir: Path,
                   num_proc: int, batch_size: int, **map_kwargs) -> dict[str, list]:
    """The summary rows `function` returns for each batch (one row per batch, in data order), as columns."""
    summaries = cached_map(dataset, function, name=name, key=key, cache_dir=cache_dir, num_proc=num_proc,
                           batch_size=batch_size, remove_columns=dataset.column_names, **map_kwargs)
    return summaries.to_dict()


def chunk_rows(dataset: datasets.Dataset) -> int:
    """Rows per chunk: about `CHUNK_BYTES` of the dataset's Arrow data (its sizes come from metadata)."""
    row_bytes = max(1.0, dataset.data.nbytes / max(1, dataset.data.num_rows))
    return max(1, int(CHUNK_BYTES / row_bytes))


def _workers(rows: int, batch_size: int, num_proc: int) -> int | None:
    """Worker processes for a chunk: none (this process) when it is one batch, else up to `num_proc`."""
    workers = min(num_proc, math.ceil(rows / batch_size))
    return workers if workers > 1 else None


def _without_gc(function: Callable, *args, **kwargs):
    """`function(*args, **kwargs)` with the cyclic garbage collector paused: a batch builds many acyclic objects
    (freed by reference counting), and collections triggered meanwhile rescan every object of the process (the
    trainer's too): 3x slower tokenization of maze episodes with them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return function(*args, **kwargs)
    finally:
        if enabled:
            gc.enable()
