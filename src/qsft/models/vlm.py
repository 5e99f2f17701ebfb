"""Vision-language models: a tiny LLaVA built from configs (no downloads), and loading saved ones.

Any Hugging Face image-text-to-text model whose forward takes `pixel_values` next to `input_ids`
and returns next-token logits works with Q-SFT and BC unchanged: the loss reads only the logits of
the text tokens. The tiny model is a real `LlavaForConditionalGeneration`: a small CLIP vision tower
(one patch per `patch_size` pixels), LLaVA's MLP projector, and a small Llama language model over the
dataset's own tokenizer, with a `LlavaProcessor` (CLIP image processor + that tokenizer) saved beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from qsft.data.images import VisionInputs
from qsft.errors import ConfigError, ModelLoadError

IMAGE_TOKEN = "<image>"
# Text model sizes mirror the GPT-2 presets of qsft.models.loading (hidden, layers, heads).
TINY_VLM_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4},
    "micro": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
    "small": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4},
}
VISION_TOWER = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}


def is_vlm_dir(path: str | Path) -> bool:
    """A saved model whose config has a vision tower (`vision_config`), e.g. LLaVA."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return "vision_config" in json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return False


def load_vlm(path: str | Path, dtype: torch.dtype | None = None):
    """`AutoModelForImageTextToText.from_pretrained` on a local directory."""
    from transformers import AutoModelForImageTextToText

    try:
        return AutoModelForImageTextToText.from_pretrained(Path(path), local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"could not load a vision-language model from {path}: {err}") from None


def load_vision(path: str | Path, tokenizer) -> VisionInputs | None:
    """The processor saved with a VLM (None for a text-only model), sharing `tokenizer`'s vocabulary."""
    vision = VisionInputs.load(path)
    if vision is not None:
        # one tokenizer object: a dummy token added to it is then saved with the processor too
        vision.processor.tokenizer = tokenizer
    elif is_vlm_dir(path):
        raise ModelLoadError(f"{path} is a vision-language model but has no processor_config.json; save its "
                             "processor there (processor.save_pretrained)")
    return vision


def build_tiny_vlm(tokenizer, image_size: int, patch_size: int = 8, preset: str = "tiny",
                   n_positions: int = 512, seed: int | None = None):
    """(a random tiny LLaVA, its `VisionInputs`) for square images of `image_size` pixels.

    Adds the `<image>` special token to `tokenizer`. With the `default` feature strategy LLaVA drops
    the CLS feature, so one image is (image_size / patch_size)^2 placeholder tokens; with MiniGrid
    frames rendered at `patch_size` pixels per cell, that is one token per grid cell.
    """
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    if preset not in TINY_VLM_PRESETS:
        raise ConfigError(f"unknown tiny model preset {preset!r}; choose from {sorted(TINY_VLM_PRESETS)}")
    if image_size < patch_size or image_size % patch_size:
        raise ConfigError(f"tiny VLM: image size {image_size} must be a positive multiple of the patch size "
                          f"{patch_size}")
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        resample=0)  # nearest: pixel-art frames keep their exact colours
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               image_token=IMAGE_TOKEN)
    text = TINY_VLM_PRESETS[preset]
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=image_size, patch_size=patch_size, **VISION_TOWER),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), intermediate_size=2 * text["hidden_size"],
            num_key_value_heads=text["num_attention_heads"], max_position_embeddings=n_positions,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, **text),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default", vision_feature_layer=-1, projector_hidden_act="gelu",
        tie_word_embeddings=True)
    if seed is not None:
        torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config), VisionInputs.from_processor(processor)
