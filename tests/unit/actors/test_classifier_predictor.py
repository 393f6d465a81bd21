"""ClassifierPredictor: the Ray Data callable, called directly (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from unspur.actors.classifier import OUTPUT_COLUMNS, ClassifierPredictor
from unspur.config import ModelConfig, SpuriousWorldConfig
from unspur.data.spuriousworld import generate_tables
from unspur.data.torch_dataset import ImageMaskDataset
from unspur.masks import encode
from unspur.models import build_model, save_checkpoint

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=4, img_size=32, kwargs=TINY)
    return str(save_checkpoint(tmp_path_factory.mktemp("ckpt"), build_model(cfg), cfg))


@pytest.fixture(scope="module")
def batch():
    images, _ = generate_tables(
        SpuriousWorldConfig(image_size=32, n_train=1, n_val=1, n_test=4), splits=("test",)
    )
    full = np.ones((32, 32), bool)
    return {
        "image_id": images.image_id.to_numpy(),
        "image": np.array([*images.image[:3], b"not an image"], dtype=object),
        "label": images.label.to_numpy(),
        "group": images.group.to_numpy(),
        "mask_rles": np.array(
            [json.dumps([encode(full)]), "", json.dumps([encode(np.zeros((32, 32), bool))]), ""], dtype=object
        ),
    }


def test_predictions_match_the_model_and_bad_image_is_an_error_row(checkpoint, batch):
    predictor = ClassifierPredictor(checkpoint)
    out = predictor(batch)
    assert tuple(out) == OUTPUT_COLUMNS and all(len(v) == 4 for v in out.values())
    assert out["pred"][3] == -1 and "cannot identify image" in out["error"][3]
    assert list(out["error"][:3]) == ["", "", ""]
    assert np.isnan(out["align_mass_in"]).all()  # no relevance method: no alignment
    ds = ImageMaskDataset(
        pd.DataFrame({k: list(v[:3]) for k, v in batch.items() if k != "mask_rles"}), img_size=32
    )
    with torch.no_grad():
        expected = predictor.model(torch.stack([ds[i]["image"] for i in range(3)])).argmax(1).numpy()
    assert out["pred"][:3].tolist() == expected.tolist()


def test_relevance_alignment_per_image(checkpoint, batch):
    out = ClassifierPredictor(checkpoint, relevance="rollout")(batch)
    # image 0: mask covers everything -> all relevance inside, pointing hits; 1-2: no usable mask
    assert out["has_mask"].tolist() == [True, False, False, False]
    assert out["align_mass_in"][0] == pytest.approx(1.0) and out["align_pointing"][0] == 1.0
    assert np.isnan(out["align_mass_in"][1:]).all()


def test_unknown_relevance_method(checkpoint):
    with pytest.raises(ValueError, match="unknown relevance method 'gradcam'"):
        ClassifierPredictor(checkpoint, relevance="gradcam")
