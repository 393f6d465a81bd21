"""Model loaders of the segmenters: real weights from ids/paths, or ``tiny`` random-init twins.

Real models load from a Hugging Face id or a local folder (GroundingDINO, CLIPSeg) and from a
segment-anything checkpoint (SAM). ``tiny`` builds a random-init model of the same class from a
config in milliseconds, so the whole mask stage runs on a CPU with nothing downloaded; its masks
are noise. The tiny text models use a WordPiece tokenizer laid out like ``bert-base-uncased``
([CLS]=101, [SEP]=102, "."=1012, as GroundingDINO expects) with letters as sub-words, so any
lowercase concept string tokenizes.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

__all__ = ["TINY", "Detector", "TextSegmenter", "load_detector", "load_sam", "load_clipseg", "tiny_tokenizer"]

#: the model name that selects a random-init test model
TINY = "tiny"
_SAM_SIZES = ("vit_h", "vit_l", "vit_b")


@dataclass
class Detector:
    """A zero-shot detector with its tokenizer and image processor (GroundingDINO-like outputs:
    ``logits`` (B, Q, T) token logits, ``pred_boxes`` (B, Q, 4) normalised cxcywh)."""

    model: Any
    tokenizer: Any
    image_processor: Any

    @property
    def max_text_len(self) -> int:
        return int(getattr(self.model.config, "max_text_len", 256))


@dataclass
class TextSegmenter:
    """A CLIPSeg model with its tokenizer and image processor."""

    model: Any
    tokenizer: Any
    image_processor: Any


def tiny_tokenizer() -> Any:
    """An offline WordPiece tokenizer (vocab 1100) with bert-base-uncased's special-token ids."""
    from transformers import BertTokenizerFast

    vocab = [f"[unused{i}]" for i in range(1100)]
    for idx, tok in (
        (0, "[PAD]"),
        (100, "[UNK]"),
        (101, "[CLS]"),
        (102, "[SEP]"),
        (103, "[MASK]"),
        (1012, "."),
        (1029, "?"),
    ):
        vocab[idx] = tok
    pieces = list(string.ascii_lowercase + string.digits) + [
        f"##{c}" for c in string.ascii_lowercase + string.digits
    ]
    pieces += list("-,'!()/&")
    for i, piece in enumerate(pieces):
        vocab[200 + i] = piece
    return BertTokenizerFast(vocab={tok: i for i, tok in enumerate(vocab)})


def _tiny_detector(seed: int) -> Detector:
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        SwinConfig,
    )

    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(
        vocab_size=1100,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    cfg = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        num_queries=16,
        encoder_layers=1,
        decoder_layers=2,
        d_model=32,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_feature_levels=3,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=128,
    )
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(cfg).eval()
    processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    return Detector(model, tiny_tokenizer(), processor)


def load_detector(name: str, device: str, seed: int = 0) -> Detector:
    """GroundingDINO from a Hugging Face id / local folder, or ``tiny`` (random init)."""
    if name == TINY:
        det = _tiny_detector(seed)
    else:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        processor = AutoProcessor.from_pretrained(name)
        model = AutoModelForZeroShotObjectDetection.from_pretrained(name).eval()
        det = Detector(model, processor.tokenizer, processor.image_processor)
    det.model.to(device)
    return det


def _tiny_sam(seed: int) -> Any:
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    img_size, patch, dim = 256, 16, 64
    grid = img_size // patch
    torch.manual_seed(seed)
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size,
            patch_size=patch,
            embed_dim=192,
            depth=6,
            num_heads=4,
            mlp_ratio=4.0,
            out_chans=dim,
            qkv_bias=True,
            use_rel_pos=True,
            window_size=4,
            global_attn_indexes=(2, 5),
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=8,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=128, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=64,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def load_sam(name: str, checkpoint: str | None, device: str, seed: int = 0) -> Any:
    """A segment-anything ``Sam``: registry size + checkpoint (``vit_h``/``vit_l``/``vit_b``) or ``tiny``."""
    if name == TINY:
        sam = _tiny_sam(seed)
    else:
        from segment_anything import sam_model_registry

        if name not in _SAM_SIZES:
            raise ValueError(f"unknown SAM model {name!r}; use one of {list(_SAM_SIZES)} or {TINY!r}")
        if not checkpoint:
            raise ValueError(
                f"SAM {name} needs a checkpoint (.pth); set segmenter.grounded_sam.sam_checkpoint"
            )
        sam = sam_model_registry[name](checkpoint=None)
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        sam.load_state_dict(state)
        sam.eval()
    return sam.to(device)


def _tiny_clipseg(seed: int) -> TextSegmenter:
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, ViTImageProcessor

    text = {
        "vocab_size": 1100,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "bos_token_id": 101,
        "eos_token_id": 102,
        "pad_token_id": 0,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "image_size": 64,
        "patch_size": 16,
    }
    cfg = CLIPSegConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=16,
        extract_layers=[1, 2],
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(cfg).eval()
    processor = ViTImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return TextSegmenter(model, tiny_tokenizer(), processor)


def load_clipseg(name: str, device: str, seed: int = 0) -> TextSegmenter:
    """CLIPSeg from a Hugging Face id / local folder, or ``tiny`` (random init)."""
    if name == TINY:
        seg = _tiny_clipseg(seed)
    else:
        from transformers import AutoProcessor, CLIPSegForImageSegmentation

        processor = AutoProcessor.from_pretrained(name)
        model = CLIPSegForImageSegmentation.from_pretrained(name).eval()
        seg = TextSegmenter(model, processor.tokenizer, processor.image_processor)
    seg.model.to(device)
    return seg
