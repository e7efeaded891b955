"""The hub path (CLIPSeg text → coarse map → SAM refinement) on tiny random models saved and loaded offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from backends.segmentation.hub import HUB_DEFAULT, HubSegmenter, coarse_prompts, split_hub_id
from backends.segmentation.query import Query
from backends.segmentation.service import SegmentationService


@pytest.fixture(scope="module")
def tiny_hub(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny SAM and a tiny CLIPSeg (MiniLM's tokenizer stands in for CLIP's) saved as hub-style folders."""
    from transformers import (
        AutoTokenizer,
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        SamConfig,
        SamImageProcessorPil,
        SamModel,
        SamProcessor,
        ViTImageProcessorPil,
    )

    from backends.core.text_encoder import minilm_dir

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hub")
    sam_config = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=8, mlp_dim=64, global_attn_indexes=[1], window_size=4,
                           num_pos_feats=16),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=8, image_embedding_size=8,
                                   mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    SamModel(sam_config).save_pretrained(root / "sam")
    SamProcessor(image_processor=SamImageProcessorPil(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}, mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16})).save_pretrained(root / "sam")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    clip_config = CLIPSegConfig(
        text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=tokenizer.cls_token_id,
                         eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                           image_size=64, patch_size=16),
        projection_dim=32, reduce_dim=16, extract_layers=[1, 2], decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    CLIPSegForImageSegmentation(clip_config).save_pretrained(root / "clipseg")
    CLIPSegProcessor(image_processor=ViTImageProcessorPil(size={"height": 64, "width": 64}),
                     tokenizer=tokenizer).save_pretrained(root / "clipseg")
    return f"{root / 'clipseg'}+{root / 'sam'}"


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((90, 120, 3)) * 255).astype(np.uint8))


def test_hub_ids():
    assert split_hub_id("clipseg+sam") == tuple(HUB_DEFAULT.split("+"))
    assert split_hub_id("facebook/sam-vit-base") == (None, "facebook/sam-vit-base")


def test_coarse_map_gives_a_box_and_a_peak():
    coarse = np.zeros((50, 60), np.float32)
    coarse[10:20, 30:40] = 0.8
    coarse[15, 35] = 0.9
    box, peak = coarse_prompts(coarse)
    assert box == (30, 10, 40, 20) and peak == (35.5, 15.5)


def test_text_clicks_and_box_through_clipseg_and_sam(tiny_hub: str, photo: Image.Image):
    hub = HubSegmenter.from_pretrained(tiny_hub)
    by_text = hub.predict(Query(photo, "the red bag"))
    assert by_text.probabilities.shape == (3, 90, 120) and len(by_text.scores) == 3
    assert "coarse_peak" in by_text.extras
    by_clicks = hub.predict(Query(photo, "", [(30.0, 40.0, 1), (60.0, 50.0, 0)], (10.0, 10.0, 80.0, 70.0)))
    assert by_clicks.probabilities.shape == (3, 90, 120)
    assert by_clicks.extras["feature_cache_hit"]  # SAM's image embedding was cached by the first query
    assert ((by_clicks.probabilities >= 0) & (by_clicks.probabilities <= 1)).all()


def test_service_serves_the_hub_path(tiny_hub: str, photo: Image.Image):
    service = SegmentationService(device="cpu")
    mask, summary = service.call("segment", photo, "", "[[30, 40, 1]]", "[10, 10, 80, 70]", tiny_hub)
    assert mask.size == photo.size and summary["model"] == tiny_hub and len(summary["candidates"]) == 3
    sam_only = tiny_hub.split("+")[1]
    with pytest.raises(Exception, match="clicks and boxes only"):
        service.call("segment", photo, "a cat", "", "", sam_only)


def test_unreachable_hub_model_is_a_clear_error(photo: Image.Image):
    service = SegmentationService(device="cpu")
    with pytest.raises(Exception, match="internet access"):
        service.call("segment", photo, "a cat", "", "", "no-such-org/no-such-sam")
