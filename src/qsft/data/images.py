"""Images on env turns, for vision-language models (docs/vlm.md).

An image reference is one of:
* a path: relative to the dataset file in JSONL (made absolute when the file is read), absolute otherwise;
* an inline `data:image/png;base64,...` URI;
* in memory (environment rollouts): an RGB `numpy` array [H, W, 3] or a PIL image.

`VisionInputs` is the model side: the Hugging Face processor of the chosen VLM, the placeholder
token ids that stand for one image in the text (exactly what the processor expands its image token
into, e.g. LLaVA's `<image>` repeated once per vision feature), and the pixel values it makes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from qsft.errors import ConfigError, EpisodeFormatError

DATA_URI_PREFIX = "data:image/"
PROCESSOR_FILE = "processor_config.json"
PIXEL_CACHE_SIZE = 4096


def is_data_uri(ref: Any) -> bool:
    return isinstance(ref, str) and ref.startswith(DATA_URI_PREFIX)


def resolve_image_ref(ref: str, base_dir: str | os.PathLike | None) -> str:
    """A path relative to `base_dir` (the dataset file's folder) made absolute; URIs and absolute paths unchanged."""
    if is_data_uri(ref) or base_dir is None or os.path.isabs(ref):
        return ref
    return os.path.normpath(os.path.join(os.fspath(base_dir), ref))


def _open_bytes(data: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def _decode_data_uri(ref: str) -> bytes:
    header, _, payload = ref.partition(",")
    if not header.endswith(";base64") or not payload:
        raise ValueError("an inline image must be 'data:image/<type>;base64,<data>'")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the inline image is not valid base64") from None


def load_image(ref: Any):
    """The image as an RGB PIL image; `ValueError` says what is wrong with a path or URI."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(ref, Image.Image):
        return ref.convert("RGB")
    if hasattr(ref, "shape") and hasattr(ref, "dtype"):  # numpy array [H, W, 3]
        return Image.fromarray(ref).convert("RGB")
    if not isinstance(ref, str):
        raise ValueError(f"an image must be a path or data URI, got {type(ref).__name__}")
    try:
        if is_data_uri(ref):
            return _open_bytes(_decode_data_uri(ref))
        if not os.path.isfile(ref):
            raise ValueError(f"image file not found: {ref}")
        with open(ref, "rb") as handle:
            return _open_bytes(handle.read())
    except (UnidentifiedImageError, OSError) as err:
        where = "the inline image" if is_data_uri(ref) else ref
        raise ValueError(f"{where} is not a readable image ({type(err).__name__}: {err})") from None


@lru_cache(maxsize=PIXEL_CACHE_SIZE)
def _check_cached(ref: str, stamp: tuple[int, int] | None) -> str | None:
    try:
        load_image(ref)
    except ValueError as err:
        return str(err)
    return None


def check_image(ref: str, *, source: str | None = None, line: int | None = None, episode_id: str | None = None,
                field: str | None = None) -> None:
    """Raise `EpisodeFormatError` (naming file, line, episode and field) unless `ref` is a readable image.

    Each file is decoded once per (path, mtime, size): a dataset of 10k turns over 64 distinct frames
    checks 64 files.
    """
    stamp = None
    if not is_data_uri(ref) and os.path.isfile(ref):
        st = os.stat(ref)
        stamp = (st.st_mtime_ns, st.st_size)
    problem = _check_cached(ref, stamp)
    if problem is not None:
        raise EpisodeFormatError(problem, source=source, line=line, episode_id=episode_id, field=field)


def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    load_image(image).save(buffer, format="PNG")
    return buffer.getvalue()


def image_reference(image: Any) -> str:
    """What a turn's image becomes in JSON: strings as they are, in-memory images as an inline PNG URI."""
    if isinstance(image, str):
        return image
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def images_folder(jsonl_path: str | os.PathLike) -> Path:
    """Where `write_episode_images` puts a dataset's frames: `<name>_images/` beside the JSONL file."""
    path = Path(jsonl_path)
    return path.with_name(f"{path.stem}_images")


def write_episode_images(episodes: Sequence, jsonl_path: str | os.PathLike) -> list:
    """Episodes whose in-memory images are written as PNG files beside `jsonl_path`, referenced relatively.

    Files are named by content (`<sha1>.png`), so a frame seen in many turns is stored once. The folder
    is filled completely under a temporary name and then swapped in, so an interrupted run leaves the
    previous folder (and the JSONL that refers to it) intact.
    """
    from qsft.data.episode import Episode, Turn

    folder = images_folder(jsonl_path)
    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():
        _remove_tree(partial)
    partial.mkdir(parents=True)
    written: set[str] = set()
    out = []
    for episode in episodes:
        turns = []
        for turn in episode.turns:
            if turn.image is None or isinstance(turn.image, str):
                turns.append(turn)
                continue
            data = png_bytes(turn.image)
            name = hashlib.sha1(data).hexdigest()[:20] + ".png"
            if name not in written:
                (partial / name).write_bytes(data)
                written.add(name)
            turns.append(Turn(turn.role, turn.text, turn.reward, f"{folder.name}/{name}"))
        out.append(Episode(episode.id, tuple(turns), episode.done, dict(episode.meta)))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        if old.exists():
            _remove_tree(old)
        os.replace(folder, old)
    os.replace(partial, folder)
    if old.exists():
        _remove_tree(old)
    return out


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def has_images(episodes: Sequence) -> bool:
    return any(turn.image is not None for episode in episodes for turn in episode.turns)


@dataclass
class VisionInputs:
    """A VLM's processor, seen from the token MDP: placeholder ids per image, and pixel values."""

    processor: Any
    placeholder: list[int]
    image_token_id: int
    _pixels: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_processor(cls, processor) -> VisionInputs:
        """Ask the processor what one image becomes in the text (e.g. LLaVA: N copies of `<image>`)."""
        from PIL import Image

        token = getattr(processor, "image_token", None)
        if token is None or getattr(processor, "image_processor", None) is None:
            raise ConfigError(f"{type(processor).__name__} is not an image-text processor (no image_token / "
                              "image_processor)")
        blank = Image.new("RGB", (64, 64))
        encoded = processor(text=[token], images=[blank], add_special_tokens=False)
        ids = [int(i) for i in encoded["input_ids"][0]]
        image_token_id = Counter(ids).most_common(1)[0][0]
        return cls(processor, ids, image_token_id)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> VisionInputs | None:
        """The processor saved in `folder` (`processor_config.json`), or None for a text-only model."""
        if not (Path(folder) / PROCESSOR_FILE).is_file():
            return None
        from transformers import AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(Path(folder), local_files_only=True)
        except (OSError, ValueError) as err:
            from qsft.errors import ModelLoadError

            raise ModelLoadError(f"could not load the image processor saved in {folder}: {err}") from None
        return cls.from_processor(processor)

    def save(self, folder: str | os.PathLike) -> None:
        self.processor.save_pretrained(str(folder))

    @property
    def tokens_per_image(self) -> int:
        return self.placeholder.count(self.image_token_id)

    def count_images(self, ids: Sequence[int], where: str) -> int:
        """How many whole image placeholders `ids` holds; a placeholder cut by truncation is an error."""
        count = sum(1 for i in ids if i == self.image_token_id)
        if count % self.tokens_per_image:
            from qsft.errors import SequenceTooLongError

            raise SequenceTooLongError(
                f"{where}: truncation cut through an image's {self.tokens_per_image} placeholder tokens; "
                "raise max_length so the latest observation (image included) fits")
        return count // self.tokens_per_image

    def pixel_values(self, images: Sequence[Any]):
        """[N, 3, H, W] float tensor for `images` (file/URI results cached), as the processor makes them."""
        import torch

        tensors = []
        for image in images:
            key = image if isinstance(image, str) else None
            cached = self._pixels.get(key) if key is not None else None
            if cached is None:
                cached = self.processor.image_processor(images=[load_image(image)], return_tensors="pt")[
                    "pixel_values"][0]
                if key is not None and len(self._pixels) < PIXEL_CACHE_SIZE:
                    self._pixels[key] = cached
            tensors.append(cached)
        return torch.stack(tensors)
