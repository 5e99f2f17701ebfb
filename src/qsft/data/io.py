"""Reading and writing episodes: JSON Lines files, Hugging Face datasets, Python dicts.

Accepted shapes per episode (one JSON object per line):
* native:  {"id": ..., "turns": [{"role": "env"|"agent", "text": ..., "reward": ...}], "done": ...}
* HF chat: {"id": ..., "messages": [{"role": "system"|"user"|"assistant", "content": ..., "reward": ...}]}
  system/user messages become env turns, assistant messages agent turns.
Env turns (user messages) may carry an `"image"`: a path relative to the JSONL file, or an inline
`data:image/...;base64,` URI (qsft.data.images); files are resolved and checked when read.
Every problem raises `EpisodeFormatError` naming the file, line, episode id and field.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from qsft.data.episode import ROLES, Episode, Turn
from qsft.errors import EpisodeFormatError
from qsft.io import atomic_open

CHAT_ROLES = {"system": "env", "user": "env", "assistant": "agent"}
KNOWN_KEYS = {"id", "turns", "messages", "done", "meta"}


def parse_episode(obj: Any, *, source: str | None = None, line: int | None = None,
                  index: int = 0, image_dir: str | os.PathLike | None = None, row: int | None = None) -> Episode:
    """Validate one decoded JSON object and build an `Episode` (native or HF chat shape).

    Image paths are resolved against `image_dir` (the dataset file's folder; None: as given) and
    every image is checked to open.
    """

    def fail(message: str, field: str | None = None, episode_id: str | None = None) -> EpisodeFormatError:
        return EpisodeFormatError(message, source=source, line=line, episode_id=episode_id, field=field, row=row)

    if not isinstance(obj, dict):
        raise fail(f"an episode must be a JSON object, got {type(obj).__name__}")
    raw_id = obj.get("id", f"episode-{index}")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise fail(f"'id' must be a string or integer, got {type(raw_id).__name__}", "id")
    episode_id = str(raw_id)
    if "turns" in obj and "messages" in obj:
        raise fail("give either 'turns' or 'messages', not both", "turns", episode_id)
    if "turns" in obj:
        key, role_key, text_key, role_map = "turns", "role", "text", {r: r for r in ROLES}
    elif "messages" in obj:
        key, role_key, text_key, role_map = "messages", "role", "content", CHAT_ROLES
    else:
        raise fail("missing 'turns' (or HF-style 'messages')", "turns", episode_id)
    items = obj[key]
    if not isinstance(items, list) or not items:
        raise fail(f"'{key}' must be a non-empty list", key, episode_id)

    turns: list[Turn] = []
    for k, item in enumerate(items):
        where = f"{key}[{k}]"
        if not isinstance(item, dict):
            raise fail(f"each turn must be an object, got {type(item).__name__}", where, episode_id)
        role = item.get(role_key)
        if not isinstance(role, str) or role not in role_map:
            raise fail(f"unknown role {role!r}; expected one of {sorted(role_map)}", f"{where}.{role_key}",
                       episode_id)
        text = item.get(text_key)
        if not isinstance(text, str):
            raise fail(f"'{text_key}' must be a string, got {type(text).__name__}", f"{where}.{text_key}",
                       episode_id)
        role = role_map[role]
        reward = item.get("reward", 0.0)
        if role == "env" and "reward" in item and reward not in (0, 0.0, None):
            raise fail("rewards belong on agent turns; env turns carry none", f"{where}.reward", episode_id)
        if reward is None:
            reward = 0.0
        if isinstance(reward, bool) or not isinstance(reward, (int, float)):
            raise fail(f"reward must be a number, got {type(reward).__name__}", f"{where}.reward", episode_id)
        if not math.isfinite(reward):
            raise fail(f"reward must be finite, got {reward}", f"{where}.reward", episode_id)
        if role == "agent" and not text:
            raise fail("agent text is empty (an action needs at least one token)", f"{where}.{text_key}",
                       episode_id)
        image = item.get("image")
        if image is not None:
            if role != "env":
                raise fail("images belong on env turns (observations)", f"{where}.image", episode_id)
            if not isinstance(image, str) or not image:
                raise fail("'image' must be a path or a data:image URI", f"{where}.image", episode_id)
            from qsft.data.images import check_image, resolve_image_ref

            image = resolve_image_ref(image, image_dir)
            check_image(image, source=source, line=line, episode_id=episode_id, field=f"{where}.image")
        turns.append(Turn(role, text, float(reward), image))

    if not any(t.role == "agent" for t in turns):
        raise fail("episode has no agent turn, so nothing to learn from", key, episode_id)
    done = obj.get("done", True)
    if not isinstance(done, bool):
        raise fail(f"'done' must be true or false, got {done!r}", "done", episode_id)
    if not done and turns[-1].role != "env":
        raise fail("a truncated episode (done: false) must end with an env turn, the state to bootstrap "
                   "from; set done: true or append the final observation", "done", episode_id)
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise fail(f"'meta' must be an object, got {type(meta).__name__}", "meta", episode_id)
    return Episode(episode_id, tuple(turns), done, meta)


def iter_jsonl(path: str | os.PathLike) -> Iterator[Episode]:
    """Yield episodes from a JSON Lines file; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise EpisodeFormatError("file not found", source=str(path))
    with open(path, "rb") as handle:
        index = 0
        for line_no, raw in enumerate(handle, start=1):
            episode = parse_jsonl_line(raw, path, line_no, index)
            if episode is not None:
                yield episode
                index += 1


def parse_jsonl_line(raw: bytes, path: Path, line_no: int, index: int) -> Episode | None:
    """The episode on one line of a JSONL file (`index`: how many episodes came before), None for a blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise EpisodeFormatError(f"not valid UTF-8 ({err.reason} at byte {err.start})",
                                 source=str(path), line=line_no) from None
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        message = err.msg if isinstance(err, json.JSONDecodeError) else "nesting too deep"
        raise EpisodeFormatError(f"invalid JSON: {message}", source=str(path), line=line_no) from None
    return parse_episode(obj, source=str(path), line=line_no, index=index, image_dir=path.parent)


def iter_table(path: str | os.PathLike) -> Iterator[Episode]:
    """Yield episodes from a table of rows in one of the episode shapes: a Parquet file, a `save_to_disk`
    folder, or a local Hugging Face dataset folder (`datasets.load_dataset(path)`, its `train` split)."""
    path = Path(path)
    source = str(path)
    if path.is_file():
        table = open_parquet(path)
        rows: Iterable[Any] = (r for batch in table.iter_batches(batch_size=1024) for r in batch.to_pylist())
    else:
        rows = dataset_rows(path)
    for row, obj in enumerate(rows):
        yield parse_episode(drop_nulls(obj), source=source, row=row, index=row, image_dir=path.parent
                            if path.is_file() else path)


def open_parquet(path: Path):
    """A `pyarrow.parquet.ParquetFile`, or the one-line error naming the file."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise EpisodeFormatError(f"not a readable Parquet file: {_first_line(err)}", source=str(path)) from None


def dataset_rows(path: Path):
    """The `datasets.Dataset` of a `save_to_disk` folder or a local Hub-format folder (its `train` split)."""
    import datasets

    try:
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():  # save_to_disk
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path))
    except Exception as err:  # noqa: BLE001 - datasets raises many types for a folder it cannot read
        raise EpisodeFormatError(f"not a readable Hugging Face dataset folder: {_first_line(err)}",
                                 source=str(path)) from None
    if isinstance(loaded, (datasets.DatasetDict, dict)):
        if "train" not in loaded:
            raise EpisodeFormatError(f"a dataset with splits {sorted(loaded)} needs a 'train' split", source=str(path))
        loaded = loaded["train"]
    return loaded


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def drop_nulls(obj: Any) -> Any:
    """Arrow tables give every row every column: a field one row lacks comes back as None. Drop them, so a
    table reads like the JSON objects it was made from (an absent `reward` is 0, not an error)."""
    if isinstance(obj, dict):
        return {k: drop_nulls(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [drop_nulls(v) for v in obj]
    return obj


TABLE_SUFFIXES = (".parquet",)


def iter_episodes(path: str | os.PathLike) -> Iterator[Episode]:
    """Episodes from a JSONL file, a Parquet file, or a dataset folder (see `iter_table`)."""
    path = Path(path)
    if path.is_dir() or path.suffix in TABLE_SUFFIXES:
        if not path.exists():
            raise EpisodeFormatError("file not found", source=str(path))
        return iter_table(path)
    return iter_jsonl(path)


def load_episodes(data: str | os.PathLike | Iterable[Any], *, check_unique_ids: bool = True) -> list[Episode]:
    """Load episodes from a path (`iter_episodes`), a `datasets.Dataset`, or an iterable of dicts/Episodes."""
    if isinstance(data, (str, os.PathLike)):
        episodes = list(iter_episodes(data))
        source = str(data)
    else:
        source = type(data).__name__
        table = hasattr(data, "features")  # a `datasets.Dataset`: Arrow rows carry None for absent fields
        episodes = [
            item if isinstance(item, Episode) else parse_episode(drop_nulls(item) if table else item, source=source,
                                                                 row=i, index=i)
            for i, item in enumerate(data)
        ]
    if not episodes:
        raise EpisodeFormatError("no episodes found", source=source)
    if check_unique_ids:
        seen: set[str] = set()
        for ep in episodes:
            if ep.id in seen:
                raise duplicate_id_error(source, ep.id)
            seen.add(ep.id)
    return episodes


def duplicate_id_error(source: str, episode_id: str) -> EpisodeFormatError:
    return EpisodeFormatError("duplicate episode id; ids must be unique", source=source, episode_id=episode_id,
                              field="id")


def save_episodes(path: str | os.PathLike, episodes: Iterable[Episode]) -> int:
    """Write episodes as JSON Lines atomically; returns how many were written."""
    count = 0
    with atomic_open(path, "w") as handle:
        for ep in episodes:
            handle.write(json.dumps(ep.to_dict(), ensure_ascii=False) + "\n")
            count += 1
    return count


def sidecar_path(data: str | os.PathLike) -> Path:
    """Where the summary of a dataset file lives: `<data>.stats.json`."""
    return Path(f"{os.fspath(data)}.stats.json")


def data_sidecar(data: str | os.PathLike) -> dict[str, Any] | None:
    """The stats sidecar `qsft data generate` writes beside a data file, if any."""
    path = sidecar_path(data)
    return json.loads(path.read_text()) if path.is_file() else None


EXPORT_FORMATS = ("parquet", "hf")


def export_episodes(episodes: list[Episode], out: str | os.PathLike, fmt: str) -> Path:
    """Write episodes as a table that `load_episodes` (and `datasets`) read back: one row per episode in the
    native shape, as a Parquet file or a `save_to_disk` folder. Written beside `out` and renamed into place,
    so an interrupted export leaves nothing half-written."""
    import shutil
    import tempfile

    import datasets

    datasets.disable_progress_bars()
    if fmt not in EXPORT_FORMATS:
        raise EpisodeFormatError(f"unknown export format {fmt!r}; choose from {', '.join(EXPORT_FORMATS)}")
    if any(t.image is not None for ep in episodes for t in ep.turns):
        raise EpisodeFormatError("exporting episodes with images is not supported yet (their paths are relative "
                                 "to the JSONL file); keep the JSONL for image data")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = datasets.Dataset.from_list([ep.to_dict() for ep in episodes])
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if fmt == "parquet":
            table.to_parquet(str(scratch / "data.parquet"))
            os.replace(scratch / "data.parquet", out)
        else:
            table.save_to_disk(str(scratch / "dataset"))
            if out.exists():
                shutil.rmtree(out)
            os.replace(scratch / "dataset", out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out
