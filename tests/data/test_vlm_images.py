"""Images on env turns: reading and checking them, placeholders in the token MDP, pixel values in batches."""

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from qsft.data.collate import TokenMDPCollator
from qsft.data.episode import Episode, Turn
from qsft.data.images import VisionInputs, image_reference, load_image
from qsft.data.io import load_episodes, save_episodes
from qsft.data.tokenize import (
    EXTERNAL_NEXT_STATE,
    SegmentEncoder,
    TokenMDPConfig,
    context_ids,
    context_images,
    tokenize_episodes,
)
from qsft.errors import ConfigError, EpisodeFormatError, SequenceTooLongError

BOS, EOT, IMG = 1, 2, 3


class CharTokenizer:
    def encode(self, text, add_special_tokens=False):
        return [10 + ord(c) - ord("a") for c in text]


class FakeImageProcessor:
    """Pixel values = the image's mean colour per channel, so tests can tell images apart."""

    def __call__(self, images, return_tensors="pt"):
        arrays = [np.asarray(image, dtype=np.float32).mean(axis=(0, 1)) for image in images]
        return {"pixel_values": torch.tensor(np.stack(arrays))[:, :, None, None]}


def vision(tokens_per_image=2):
    class Processor:
        image_processor = FakeImageProcessor()

    return VisionInputs(Processor(), [IMG] * tokens_per_image, IMG)


def frame(value):
    return np.full((4, 4, 3), value, dtype=np.uint8)


def png_file(path, value):
    Image.fromarray(frame(value)).save(path)
    return path


def cfg(**kw):
    return TokenMDPConfig(**{"gamma": 0.9, "max_length": 64, "bos_token_id": BOS, "eot_token_id": EOT, **kw})


def image_episode():
    return Episode("e", (Turn("env", "a", image=frame(10)), Turn("agent", "x", 0.0),
                         Turn("env", "b", image=frame(20)), Turn("agent", "y", 1.0)), True)


def test_load_image_from_path_uri_and_array(tmp_path):
    path = png_file(tmp_path / "f.png", 7)
    uri = image_reference(frame(7))
    assert uri.startswith("data:image/png;base64,")
    for ref in (str(path), uri, frame(7), Image.fromarray(frame(7))):
        image = load_image(ref)
        assert image.mode == "RGB" and image.size == (4, 4) and np.asarray(image)[0, 0, 0] == 7


def test_jsonl_paths_resolve_against_the_file_and_round_trip(tmp_path):
    (tmp_path / "frames").mkdir()
    png_file(tmp_path / "frames" / "a.png", 5)
    inline = image_reference(frame(9))
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "e", "turns": [
        {"role": "env", "text": "a", "image": "frames/a.png"}, {"role": "agent", "text": "x", "reward": 1},
        {"role": "env", "text": "b", "image": inline}, {"role": "agent", "text": "y", "reward": 0}]}) + "\n")
    (episode,) = load_episodes(data)
    assert episode.turns[0].image == str(tmp_path / "frames" / "a.png")
    assert episode.turns[2].image == inline
    save_episodes(tmp_path / "copy.jsonl", [episode])
    (again,) = load_episodes(tmp_path / "copy.jsonl")
    assert [t.image for t in again.turns] == [t.image for t in episode.turns]


def test_in_memory_images_are_saved_inline(tmp_path):
    save_episodes(tmp_path / "d.jsonl", [image_episode()])
    (loaded,) = load_episodes(tmp_path / "d.jsonl")
    assert np.asarray(load_image(loaded.turns[2].image))[0, 0, 0] == 20


@pytest.mark.parametrize("image, problem", [
    ("missing.png", "image file not found"),
    ("bad.png", "not a readable image"),
    ("data:image/png;base64,@@@", "not valid base64"),
    ("data:image/png;base64," + base64.b64encode(b"not a png").decode(), "not a readable image"),
    (42, "must be a path or a data:image URI"),
])
def test_bad_images_name_file_line_and_field(tmp_path, image, problem):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG truncated")
    data = tmp_path / "d.jsonl"
    good = {"id": "ok", "turns": [{"role": "env", "text": "a"}, {"role": "agent", "text": "x"}]}
    bad = {"id": "b", "turns": [{"role": "env", "text": "a"}, {"role": "agent", "text": "x"},
                                {"role": "env", "text": "b", "image": image}, {"role": "agent", "text": "y"}]}
    data.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(EpisodeFormatError) as err:
        load_episodes(data)
    message = str(err.value)
    assert f"{data}:2" in message and "episode 'b'" in message and "turns[2].image" in message
    assert problem in message


def test_images_only_on_env_turns(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"turns": [{"role": "env", "text": "a"},
                                          {"role": "agent", "text": "x", "image": "a.png"}]}) + "\n")
    with pytest.raises(EpisodeFormatError, match="images belong on env turns"):
        load_episodes(data)


def test_windowed_samples_carry_the_images_of_their_contexts():
    s0, s1 = tokenize_episodes([image_episode()], CharTokenizer(), cfg(history_turns=1), vision())
    #                  BOS  [image a]  a   x  EOT
    assert s0.input_ids == [BOS, IMG, IMG, 10, 33, EOT]
    assert s0.action_mask == [0, 0, 0, 0, 1, 1]
    assert s0.next_state_index[-1] == EXTERNAL_NEXT_STATE
    assert s0.next_input_ids == [BOS, IMG, IMG, 11]
    assert [int(i[0, 0, 0]) for i in s0.images] == [10] and [int(i[0, 0, 0]) for i in s0.next_images] == [20]
    assert [int(i[0, 0, 0]) for i in s1.images] == [20] and s1.next_images == []


def test_full_sequence_keeps_the_images_left_truncation_kept():
    (whole,) = tokenize_episodes([image_episode()], CharTokenizer(), cfg(), vision())
    assert whole.input_ids.count(IMG) == 4 and len(whole.images) == 2
    # 12 tokens in all; max_length 7 drops the first env + agent turn: only the second image stays
    (cut,) = tokenize_episodes([image_episode()], CharTokenizer(), cfg(max_length=7), vision())
    assert cut.input_ids == [BOS, IMG, IMG, 11, 34, EOT]
    assert [int(i[0, 0, 0]) for i in cut.images] == [20]


@pytest.mark.parametrize("max_length, problem", [(7, "dropped the image"), (9, "cut through")])
def test_truncation_never_loses_the_latest_image_silently(max_length, problem):
    # the context budget is max_length - BOS - 2 reply tokens; the observation is 4 image + 4 text tokens
    episode = Episode("long", (Turn("env", "abcd", image=frame(1)), Turn("agent", "x", 1.0)), True)
    with pytest.raises(SequenceTooLongError, match=problem):
        tokenize_episodes([episode], CharTokenizer(), cfg(history_turns=1, max_length=max_length),
                          vision(tokens_per_image=4))


def test_text_models_refuse_image_episodes_and_texts_may_not_hold_the_image_token():
    with pytest.raises(ConfigError, match="text-only"):
        tokenize_episodes([image_episode()], CharTokenizer(), cfg(history_turns=1))

    class ImageTokenTokenizer(CharTokenizer):
        def encode(self, text, add_special_tokens=False):
            return [IMG] if text == "<image>" else super().encode(text)

    episode = Episode("e", (Turn("env", "<image>"), Turn("agent", "x", 1.0)), True)
    with pytest.raises(EpisodeFormatError, match="placeholder token"):
        tokenize_episodes([episode], ImageTokenTokenizer(), cfg(history_turns=1), vision())


def test_collator_stacks_pixel_values_in_row_order():
    samples = tokenize_episodes([image_episode()], CharTokenizer(), cfg(history_turns=1), vision())
    batch = TokenMDPCollator(0, BOS, vision())(samples)
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [10, 20]
    assert batch["next_pixel_values"][:, 0, 0, 0].tolist() == [20]  # the terminal row has no next context
    assert (batch["input_ids"] == IMG).sum() == 2 * 2 and (batch["next_input_ids"] == IMG).sum() == 2
    text_only = TokenMDPCollator(0, BOS)(samples)
    assert "pixel_values" not in text_only


def test_rollout_contexts_name_their_images():
    encode = SegmentEncoder(CharTokenizer(), vision())
    turns = list(image_episode().turns[:3])
    ids = context_ids(turns, encode, cfg(history_turns=1))
    assert ids == [BOS, IMG, IMG, 11]
    assert [int(i[0, 0, 0]) for i in context_images(turns, ids, encode)] == [20]


def test_pixel_values_of_files_are_cached(tmp_path):
    path = str(png_file(tmp_path / "f.png", 30))
    inputs = vision()
    first = inputs.pixel_values([path, path])
    (tmp_path / "f.png").unlink()  # a second batch does not read the file again
    assert torch.equal(inputs.pixel_values([path]), first[:1])


def test_png_roundtrip_is_lossless():
    image = np.random.default_rng(0).integers(0, 255, (6, 6, 3), dtype=np.uint8)
    data = base64.b64decode(image_reference(image).split(",", 1)[1])
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), image)
