"""The tiny VLM: a real LLaVA from configs, its processor, saving/loading, and cached image-text decoding."""

import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration

from qsft.data.images import VisionInputs
from qsft.data.tiny_tokenizer import build_tiny_tokenizer
from qsft.decoding.generation import DecodingModels, generate_utterances
from qsft.errors import ConfigError
from qsft.models.loading import ensure_dummy_token, load_model, load_tokenizer
from qsft.models.vlm import IMAGE_TOKEN, build_tiny_vlm, is_vlm_dir, load_vision

TEXTS = ["get to the green goal square\n", "turn left", "turn right", "forward"]


def tiny_vlm(size=16, seed=0):
    tokenizer = build_tiny_tokenizer(TEXTS, action_texts=TEXTS[1:])
    model, vision = build_tiny_vlm(tokenizer, size, patch_size=8, preset="micro", n_positions=64, seed=seed)
    return model.eval(), tokenizer, vision


def frames(n, seed=0):
    return [np.random.default_rng(seed + i).integers(0, 255, (16, 16, 3), dtype=np.uint8) for i in range(n)]


def prompt(tokenizer, vision):
    return [tokenizer.bos_token_id, *vision.placeholder, *tokenizer.encode(TEXTS[0], add_special_tokens=False)]


def test_placeholder_is_what_the_llava_processor_makes():
    model, tokenizer, vision = tiny_vlm(size=16)
    assert isinstance(model, LlavaForConditionalGeneration)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert vision.image_token_id == image_id == model.config.image_token_id
    assert vision.placeholder == [image_id] * 4  # (16 / 8)^2 patches, the CLS feature dropped
    encoded = vision.processor(text=[IMAGE_TOKEN + TEXTS[0]], images=frames(1), add_special_tokens=False)
    assert list(encoded["input_ids"][0]) == prompt(tokenizer, vision)[1:]
    assert vision.pixel_values(frames(3)).shape == (3, 3, 16, 16)
    with pytest.raises(ConfigError, match="multiple"):
        build_tiny_vlm(build_tiny_tokenizer(TEXTS), 20, patch_size=8)


def test_logits_depend_on_the_image():
    model, tokenizer, vision = tiny_vlm()
    ids = torch.tensor([prompt(tokenizer, vision)] * 2)
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=vision.pixel_values(frames(2))).logits
    assert not torch.allclose(logits[0, -1], logits[1, -1])


def test_save_and_load_round_trip(tmp_path):
    model, tokenizer, vision = tiny_vlm()
    ensure_dummy_token(tokenizer, model, "[DUMMY]")  # already a special token of the tiny tokenizer
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    vision.save(tmp_path)
    assert is_vlm_dir(tmp_path)
    loaded, loaded_tokenizer = load_model(tmp_path).eval(), load_tokenizer(tmp_path)
    loaded_vision = load_vision(tmp_path, loaded_tokenizer)
    assert type(loaded) is LlavaForConditionalGeneration
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert loaded_vision.placeholder == vision.placeholder
    ids = torch.tensor([prompt(tokenizer, vision)])
    images = frames(1)
    torch.testing.assert_close(loaded_vision.pixel_values(images), vision.pixel_values(images))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, pixel_values=loaded_vision.pixel_values(images)).logits,
                                   model(input_ids=ids, pixel_values=vision.pixel_values(images)).logits)
    assert VisionInputs.load(tmp_path / "nowhere") is None


def test_batched_cached_generation_matches_one_prompt_at_a_time():
    model, tokenizer, vision = tiny_vlm(seed=3)
    behavior, _, _ = tiny_vlm(seed=4)
    base = prompt(tokenizer, vision)
    # different lengths, so rows are left-padded; one image per prompt
    prompts = [base, base + tokenizer.encode(TEXTS[1], add_special_tokens=False), base]
    images = frames(3, seed=7)
    pixels = vision.pixel_values(images)
    models = DecodingModels(model, behavior, "beta", 2.0)
    kwargs = dict(eot_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, max_new_tokens=5,
                  greedy=True)
    batched = generate_utterances(models, prompts, pixel_values=pixels, **kwargs)
    alone = [generate_utterances(models, [p], pixel_values=pixels[i:i + 1], **kwargs)[0]
             for i, p in enumerate(prompts)]
    assert batched == alone
    suppressed = generate_utterances(models, prompts, pixel_values=pixels,
                                     suppress_token_ids=[vision.image_token_id], **kwargs)
    assert all(vision.image_token_id not in row for row in suppressed)
