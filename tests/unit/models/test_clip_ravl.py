"""The region path of a RaVL step: dataset region crops from flags -> clip family region and
class-text features in one forward -> the ravl loss, with gradients into the model; the in-place
region view."""

from __future__ import annotations

import pandas as pd
import torch
from torch.utils.data import DataLoader

from unspur.config import ClipModelConfig, DigitsGridConfig
from unspur.data.digits_grid import DIGIT_NAMES, sample_rows
from unspur.data.torch_dataset import REGION_FIELDS, ImageMaskDataset
from unspur.losses import LOSSES, RavlLossConfig
from unspur.models.families import get_family, input_norm
from unspur.regions import grid_boxes

GRID = DigitsGridConfig(image_size=32, digits=[0, 1], n_train=4, cramers_v=0.9)


def test_region_crops_features_and_loss():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rows = [sample_rows(GRID, "train", i)[0] for i in range(4)]
    images = pd.DataFrame(rows)
    boxes = grid_boxes(32, 32, 2)
    flags = pd.DataFrame(
        [
            {
                "image_id": r["image_id"],
                "region_id": q,
                "box": list(boxes[q]),
                "spurious": q == r["marker_region"],
                "tied_class": 0 if q == r["marker_region"] else -1,
            }
            for r in rows[:3]  # the 4th image has no flags: its regions are padding
            for q in range(4)
        ]
    )
    cfg = ClipModelConfig(img_size=32, classes=[DIGIT_NAMES[d] for d in GRID.digits])
    family = get_family("clip")
    model = family.build(cfg)
    spec = LOSSES["ravl"]
    ds = ImageMaskDataset(
        images,
        None,
        32,
        fields=spec.batch_keys,
        tokenizer=family.tokenizer(cfg),
        region_flags=flags,
        **input_norm(model),
    )
    item = ds[0]
    assert item["regions"].shape == (4, 3, 32, 32) and item["region_valid"].all()
    assert item["region_spurious"].tolist() == [q == rows[0]["marker_region"] for q in range(4)]
    # a quadrant crop is that quadrant of the image, resized x2
    quadrant = torch.nn.functional.interpolate(
        item["image"][None, :, :16, :16], scale_factor=2, mode="bilinear"
    )
    assert torch.allclose(item["regions"][0], quadrant[0], atol=0.35)
    assert not ds[3]["region_valid"].any()
    # erased: the image with its spurious (marker) quadrant zeroed, tied to class 0
    x0, y0, x1, y1 = boxes[rows[0]["marker_region"]]
    black = ((0.0 - ds.mean) / ds.std).view(3, 1, 1)
    assert item["erased_tied"].item() == 0
    assert torch.allclose(item["erased"][:, y0:y1, x0:x1], black.expand(3, y1 - y0, x1 - x0), atol=1e-6)
    kept = torch.ones(32, 32, dtype=torch.bool)
    kept[y0:y1, x0:x1] = False
    assert torch.allclose(item["erased"][:, kept], item["image"][:, kept], atol=1e-6)
    assert ds[3]["erased_tied"].item() == -1 and torch.allclose(ds[3]["erased"], ds[3]["image"], atol=1e-6)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    out = family.forward(model, batch, spec.needs)
    assert out["region_features"].shape == (4, 4, out["image_features"].shape[1])
    assert out["class_text_features"].shape == (2, out["image_features"].shape[1])
    assert out["image_features"].shape[0] == 4
    assert out["erased_features"].shape == out["image_features"].shape
    terms = spec(out, batch, RavlLossConfig())
    terms["loss"].backward()
    assert all(torch.isfinite(v) for v in terms.values()) and terms["pull"] > 0
    assert model.visual.proj.grad is not None


def test_in_place_region_view_is_the_image_zeroed_outside_the_box():
    rows = [sample_rows(GRID, "train", i)[0] for i in range(2)]
    boxes = grid_boxes(32, 32, 2)
    flags = pd.DataFrame(
        [
            {
                "image_id": rows[0]["image_id"],
                "region_id": q,
                "box": list(boxes[q]),
                "spurious": False,
                "tied_class": -1,
            }
            for q in range(4)
        ]
    )
    ds = ImageMaskDataset(
        pd.DataFrame(rows), None, 32, fields=("image", "regions"), region_flags=flags, region_view="in_place"
    )
    item = ds[0]
    black = ((0.0 - ds.mean) / ds.std).view(3, 1)  # a zeroed pixel, normalised
    for q, (x0, y0, x1, y1) in enumerate(boxes):
        view = item["regions"][q]
        assert torch.allclose(view[:, y0:y1, x0:x1], item["image"][:, y0:y1, x0:x1], atol=1e-6)
        outside = torch.ones(32, 32, dtype=torch.bool)
        outside[y0:y1, x0:x1] = False
        assert torch.allclose(view[:, outside], black.expand(3, int(outside.sum())), atol=1e-6)


def test_pasted_view_carries_a_donor_region_clear_of_the_image_and_encodes_as_that_view():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rows = [sample_rows(GRID, "train", i)[0] for i in range(4)]
    boxes = grid_boxes(32, 32, 2)
    donor = next(r for r in rows if r["has_marker"])
    receivers = [r for r in rows if not r["has_marker"]]
    assert receivers, "the grid draw must hold an image without the marker"

    def flag(r, q, spurious):
        return {
            "image_id": r["image_id"],
            "region_id": q,
            "box": list(boxes[q]),
            "spurious": spurious,
            "tied_class": 1 if spurious else -1,
        }

    flags = [flag(donor, donor["marker_region"], True), flag(donor, donor["digit_region"], False)]
    for r in receivers:  # each receiver lists its digit's quadrant
        flags.append(flag(r, r["digit_region"], False))
    table = pd.DataFrame(rows)
    kwargs = {"fields": ("image", "label", *REGION_FIELDS), "region_flags": pd.DataFrame(flags)}
    ds = ImageMaskDataset(table, None, 32, region_paste=True, **kwargs)
    off = ImageMaskDataset(table, None, 32, **kwargs)
    x0, y0, x1, y1 = boxes[donor["marker_region"]]
    donor_item = ds[table.index[table["image_id"] == donor["image_id"]][0]]
    assert donor_item["pasted_tied"].item() == -1  # it has a spurious region of its own
    for r in receivers:
        index = table.index[table["image_id"] == r["image_id"]][0]
        item = ds[index]
        assert off[index]["pasted_tied"].item() == -1 and not off[index]["pasted"].any()
        if r["digit_region"] == donor["marker_region"]:  # the donor's box would cover the digit
            assert item["pasted_tied"].item() == -1
            continue
        assert item["pasted_tied"].item() == 1
        pasted, image = item["pasted"], item["image"]
        assert torch.allclose(pasted[:, y0:y1, x0:x1], donor_item["image"][:, y0:y1, x0:x1], atol=1e-6)
        outside = torch.ones(32, 32, dtype=torch.bool)
        outside[y0:y1, x0:x1] = False
        assert torch.allclose(pasted[:, outside], image[:, outside], atol=1e-6)

    cfg = ClipModelConfig(img_size=32, classes=[DIGIT_NAMES[d] for d in GRID.digits])
    family = get_family("clip")
    model = family.build(cfg).eval()
    batch = {
        "image": torch.stack([ds[i]["image"] for i in range(4)]),
        "pasted": torch.stack([ds[i]["pasted"] for i in range(4)]),
        "pasted_tied": torch.tensor([ds[i]["pasted_tied"].item() for i in range(4)]),
    }
    with torch.no_grad():
        out = family.forward(model, batch, frozenset({"image_features", "pasted_features"}))
        alone = family.forward(model, {"image": batch["pasted"]}, frozenset({"image_features"}))
    has = batch["pasted_tied"] >= 0
    assert has.any()
    assert torch.allclose(out["pasted_features"][has], alone["image_features"][has], atol=1e-5)
    assert torch.allclose(out["pasted_features"][~has], out["image_features"][~has], atol=1e-6)
