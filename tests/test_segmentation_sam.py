"""SAM from the user's ``segment_anything`` package, SAM 2.1 and SAM 3 from transformers, on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from backends.core.service import ServiceError
from backends.segmentation.hub import CHECKPOINT_ENV, HubSegmenter, SegmentAnythingSam, TransformersSam, load_hub_model
from backends.segmentation.query import Query
from backends.segmentation.service import SegmentationService


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((90, 120, 3)) * 255).astype(np.uint8))


def test_segment_anything_ids_are_checked_before_loading(monkeypatch: pytest.MonkeyPatch, photo: Image.Image):
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    service = SegmentationService(device="cpu")
    with pytest.raises(ServiceError, match="vit_b, vit_l, vit_h"):
        service.call("segment", photo, "", "[[30, 40, 1]]", "", "segment-anything:vit_x")
    with pytest.raises(ServiceError, match=CHECKPOINT_ENV):
        service.call("segment", photo, "", "[[30, 40, 1]]", "", "segment-anything:vit_b")
    with pytest.raises(ServiceError, match="not found: /no/such/sam.pth"):
        load_hub_model("segment-anything:vit_h:/no/such/sam.pth")


def test_segment_anything_predictor_on_a_tiny_sam(photo: Image.Image):
    """A tiny SAM built from segment_anything's own modeling classes: points, a box, three masks, and the image
    embedding computed once (set_image) for repeated queries."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    sam = Sam(
        image_encoder=ImageEncoderViT(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                                      out_chans=32, window_size=4, global_attn_indexes=(1,)),
        prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(8, 8), input_image_size=(64, 64),
                                     mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=32, mlp_dim=64, num_heads=2), transformer_dim=32, iou_head_depth=2,
            iou_head_hidden_dim=32),
    )
    hub = HubSegmenter("segment-anything:tiny", SegmentAnythingSam(sam))
    first = hub.predict(Query(photo, "", [(30.0, 40.0, 1), (60.0, 50.0, 0)]))
    assert first.probabilities.shape == (3, 90, 120) and len(first.scores) == 3
    assert not first.extras["feature_cache_hit"]
    boxed = hub.predict(Query(photo, "", [], (10.0, 10.0, 80.0, 70.0)))
    assert boxed.extras["feature_cache_hit"] and ((boxed.probabilities >= 0) & (boxed.probabilities <= 1)).all()
    assert not np.allclose(first.probabilities, boxed.probabilities)  # the prompts reach the decoder


def _tiny_sam2(folder) -> str:
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2ImageProcessor,
        Sam2Model,
        Sam2Processor,
        Sam2VisionConfig,
    )

    torch.manual_seed(0)
    backbone = Sam2HieraDetConfig(hidden_size=12, image_size=128, blocks_per_stage=[1, 1, 2, 1],
                                  embed_dim_per_stage=[12, 24, 48, 96], num_attention_heads_per_stage=[1, 1, 2, 2],
                                  global_attention_blocks=[3], window_size_per_stage=[4, 4, 4, 4])
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[96, 48, 24, 12],
                              backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]], fpn_hidden_size=32)
    config = Sam2Config(vision_config=vision, prompt_encoder_config=dict(hidden_size=32, image_size=128, patch_size=16),
                        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2,
                                                 iou_head_hidden_dim=32), image_size=128)
    Sam2Model(config).save_pretrained(folder)
    Sam2Processor(image_processor=Sam2ImageProcessor(size={"height": 128, "width": 128},
                                                     mask_size={"height": 32, "width": 32})).save_pretrained(folder)
    return str(folder)


def test_sam2_from_a_tiny_config(tmp_path, photo: Image.Image):
    sam2_id = _tiny_sam2(tmp_path / "sam2")
    hub = load_hub_model(sam2_id)
    assert isinstance(hub, HubSegmenter) and isinstance(hub.sam, TransformersSam)
    first = hub.predict(Query(photo, "", [(30.0, 40.0, 1)], (10.0, 10.0, 80.0, 70.0)))
    again = hub.predict(Query(photo, "", [(60.0, 50.0, 1)]))
    assert first.probabilities.shape == again.probabilities.shape == (3, 90, 120)
    assert again.extras["feature_cache_hit"] and len(first.scores) == 3


def test_sam3_from_a_tiny_config(tmp_path, photo: Image.Image):
    """SAM 3: text → every matching instance; the three candidates are all instances, the best and the two best."""
    from transformers import (
        AutoTokenizer,
        Sam3Config,
        Sam3DETRDecoderConfig,
        Sam3DETREncoderConfig,
        Sam3GeometryEncoderConfig,
        Sam3ImageProcessor,
        Sam3MaskDecoderConfig,
        Sam3Model,
        Sam3Processor,
        Sam3VisionConfig,
        Sam3ViTConfig,
    )

    from backends.core.text_encoder import minilm_dir

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    backbone = Sam3ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                             image_size=224, patch_size=14, window_size=8, global_attn_indexes=[0, 1])
    layers = dict(num_attention_heads=4, intermediate_size=64)
    config = Sam3Config(
        vision_config=Sam3VisionConfig(backbone_config=backbone, fpn_hidden_size=32, scale_factors=[2.0, 1.0]),
        text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, projection_dim=32,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32,
                         bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        geometry_encoder_config=Sam3GeometryEncoderConfig(hidden_size=32, num_layers=1, mask_fuser_hidden_size=32,
                                                          mask_fuser_num_layers=1, **layers),
        detr_encoder_config=Sam3DETREncoderConfig(hidden_size=32, num_layers=1, **layers),
        detr_decoder_config=Sam3DETRDecoderConfig(hidden_size=32, num_layers=1, num_queries=5, **layers),
        mask_decoder_config=Sam3MaskDecoderConfig(hidden_size=32, num_upsampling_stages=2),
    )
    folder = tmp_path / "sam3"
    Sam3Model(config).save_pretrained(folder)
    Sam3Processor(image_processor=Sam3ImageProcessor(size={"height": 224, "width": 224}),
                  tokenizer=tokenizer).save_pretrained(folder)
    segmenter = load_hub_model(str(folder))
    prediction = segmenter.predict(Query(photo, "all the boats"))
    assert prediction.probabilities.shape == (3, 90, 120) and len(prediction.scores) == 3
    union, best = prediction.probabilities[0], prediction.probabilities[1]
    assert (union >= best).all()  # every instance is in the first candidate
    with pytest.raises(ServiceError, match="not clicks"):
        segmenter.predict(Query(photo, "a boat", [(30.0, 40.0, 1)]))
