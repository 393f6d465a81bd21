"""Segmenters: the predictor API (one encode per image), each backend, the actor's rows, bad images."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from unspur.actors.ground_truth import GroundTruth, head_noun, match_part
from unspur.actors.grounded_sam import build_prompts, nms
from unspur.actors.segmenter_models import tiny_tokenizer
from unspur.actors.segmenters import MASK_COLUMNS, SEGMENTERS, SegmenterActor, build_segmenter
from unspur.config import SegmenterConfig, SpuriousWorldConfig
from unspur.data.images import decode_rgb
from unspur.data.spuriousworld import render_sample, sample_rows
from unspur.masks import decode, encode

CONCEPTS16 = [f"concept {c}" for c in "abcdefghijklmnop"]


def _png(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format=fmt) if mode else Image.fromarray(arr).save(
        buf, format=fmt
    )
    return buf.getvalue()


def _rgb(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _gt_lookup(h: int = 48, w: int = 64) -> dict[str, dict[str, dict]]:
    beak = np.zeros((h, w), bool)
    beak[5:15, 10:30] = True
    wing = np.zeros((h, w), bool)
    wing[20:40, 5:50] = True
    return {"img-0": {"beak": encode(beak), "wing": encode(wing)}, "img-1": {"wing": encode(wing)}}


def _config(name: str, **section) -> SegmenterConfig:
    sections = {
        "grounded_sam": {
            "detector": "tiny",
            "sam_model": "tiny",
            "box_threshold": 0.0,
            "text_threshold": 0.0,
        },
        "clipseg": {"model": "tiny", "threshold": 0.5},
        "ground_truth": {},
    }
    return SegmenterConfig(name=name, device="cpu", **{name: {**sections[name], **section}})


def _build(name: str, **section):
    if name == "ground_truth":
        lookup = _gt_lookup()
        return GroundTruth(lambda image_id: lookup.get(image_id, {}))
    return build_segmenter(_config(name, **section))


def test_every_registered_segmenter_has_a_settings_section():
    cfg = SegmenterConfig(name="ground_truth")
    assert set(SEGMENTERS) == {"grounded_sam", "clipseg", "ground_truth"}
    for name in SEGMENTERS:
        assert isinstance(getattr(cfg, name), SEGMENTERS.entry(name).config)
    with pytest.raises(
        ValueError, match="unknown segmenter 'sam9'; registered: clipseg, ground_truth, grounded_sam"
    ):
        SegmenterConfig(name="sam9")


@pytest.mark.parametrize("name", sorted(SEGMENTERS))
def test_every_backend_answers_each_concept_at_image_size(name):
    seg = _build(name)
    image = _rgb()
    seg.set_image(image, "img-0")
    concepts = ["long beak", "wings", "bicycle wheel"]
    out = seg.predict(concepts)
    assert [m.concept for m in out] == concepts
    for m in out:
        assert m.status in ("ok", "empty", "error")
        if m.status == "ok":
            assert m.mask.shape == image.shape[:2] and m.mask.dtype == bool and m.mask.any()
        else:
            assert m.mask is None and m.note


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_grounded_sam_encodes_each_image_once_and_decodes_all_boxes_in_one_call():
    actor = SegmenterActor(
        _config("grounded_sam", max_boxes_per_concept=1).model_dump(), {"bird": CONCEPTS16}
    )
    seg = actor.segmenter
    encodes = _count_calls(seg.predictor.model.image_encoder)
    decodes = _count_calls(seg.predictor.model.mask_decoder)
    detector = _count_calls(seg.detector.model)
    batch = {
        "image_id": np.array(["a", "b"], dtype=object),
        "class_name": np.array(["bird"] * 2, dtype=object),
        "image": np.array([_png(_rgb(32, 32, seed=i)) for i in range(2)], dtype=object),
    }
    rows = actor(batch)
    assert encodes[0] == 2  # one SAM encode per image, not per concept
    assert decodes[0] == 2  # the boxes of all 16 concepts in one predict_torch call per image
    assert detector[0] == 2  # merged prompt: one detector pass per image
    assert len(rows["image_id"]) == 2 * 16
    assert set(rows["status"]) == {"ok"}


def test_grounded_sam_mask_is_the_union_of_its_boxes():
    seg = _build("grounded_sam", max_boxes_per_concept=3, nms_iou=1.0)
    image = _rgb(24, 32, seed=3)
    seg.set_image(image)
    concepts = ["long beak", "wing"]
    boxes = seg.detect(concepts)
    out = seg.predict(concepts)
    for d, m in zip(boxes, out, strict=True):
        assert len(d.boxes) >= 2
        expected = np.zeros(image.shape[:2], bool)
        for box in d.boxes:
            masks, _, _ = seg.predictor.predict(box=box.numpy(), multimask_output=False)
            expected |= masks[0]
        agree = (expected == m.mask).mean()
        assert agree > 0.999, agree


def test_grounded_sam_decodes_a_box_shared_by_concepts_once():
    seg = _build("grounded_sam", max_boxes_per_concept=2)
    seg.set_image(_rgb(24, 32, seed=5))
    found = seg.detect(CONCEPTS16)
    distinct = {k for d in found for k in d.keys.tolist()}
    decoded = []
    original = seg.predictor.predict_torch

    def counting(*args, **kwargs):
        decoded.append(len(kwargs["boxes"]))
        return original(*args, **kwargs)

    seg.predictor.predict_torch = counting
    out = seg.predict(CONCEPTS16)
    assert sum(decoded) == len(distinct) < sum(len(d.keys) for d in found)
    assert all(m.status == "ok" for m in out)


def test_grounded_sam_without_detection_is_empty():
    seg = _build("grounded_sam", box_threshold=1.0)
    seg.set_image(_rgb())
    out = seg.predict(["beak", "wing"])
    assert [m.status for m in out] == ["empty", "empty"]
    assert "threshold" in out[0].note


def test_grounded_sam_per_concept_prompts_match_concept_count():
    seg = _build("grounded_sam", prompt_mode="per_concept")
    calls = []
    seg.detector.model.register_forward_hook(
        lambda mod, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    seg.set_image(_rgb())
    assert len(seg.predict(["beak", "wing", "tail"])) == 3
    assert calls == [3]  # one batched pass, one prompt per concept


def test_build_prompts_spans_and_chunking():
    tok = tiny_tokenizer()
    (prompt,) = build_prompts(tok, ["Long beak", "wing"], "merged", 128)
    assert prompt.text == "long beak. wing."
    ids = tok(prompt.text)["input_ids"]
    assert tok.decode([ids[i] for i in prompt.spans[0]]).replace(" ##", "").replace(" ", "") == "longbeak"
    assert tok.decode([ids[i] for i in prompt.spans[1]]).replace(" ##", "").replace(" ", "") == "wing"
    chunks = build_prompts(tok, CONCEPTS16, "merged", 24)
    assert len(chunks) > 1
    assert sorted(i for p in chunks for i in p.spans) == list(range(16))
    assert all(len(tok(p.text)["input_ids"]) <= 24 for p in chunks)
    assert len(build_prompts(tok, CONCEPTS16, "per_concept", 128)) == 16


def test_nms_keeps_best_of_overlapping_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 9, 10]], dtype=torch.float)
    scores = torch.tensor([0.5, 0.9, 0.3, 0.4])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 1.0).tolist() == [1, 0, 3, 2]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


def test_clipseg_encodes_once_and_matches_the_models_own_forward():
    seg = _build("clipseg")
    vision = _count_calls(seg.seg.model.clip.vision_model)
    image = _rgb(40, 50, seed=1)
    seg.set_image(image)
    concepts = ["beak", "long wing", "x"]
    out = seg.predict(concepts)
    assert vision[0] == 1
    text = seg.seg.tokenizer(concepts, padding=True, return_tensors="pt")
    pixels = seg.seg.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = seg.seg.model(
            input_ids=text["input_ids"],
            attention_mask=text["attention_mask"],
            pixel_values=pixels.expand(3, -1, -1, -1),
        ).logits
    probs = torch.nn.functional.interpolate(logits[:, None], size=(40, 50), mode="bilinear").sigmoid()[:, 0]
    for m, p in zip(out, probs, strict=True):
        assert m.score == pytest.approx(float(p.max()), abs=1e-5)
        expected = (p > 0.5).numpy()
        assert (m.mask if m.mask is not None else np.zeros_like(expected)).tolist() == expected.tolist()


@pytest.mark.parametrize(
    ("concept", "part"),
    [
        ("long beak", "beak"),
        ("bicycle wheel", "wheel"),
        ("Wings", "wing"),
        ("beak", "beak"),
        ("tip of the wing", None),
        ("colorful plumage", None),
        ("tail_fin", "tail fin"),
        ("leaves", "leaf"),
    ],
)
def test_match_part_by_exact_name_then_head_noun(concept, part):
    assert match_part(concept, ["beak", "wing", "wheel", "tail fin", "leaf"]) == part


def test_head_noun():
    assert head_noun("long beak") == "beak"
    assert head_noun("tip of the wing") == "tip"
    assert head_noun("") == ""


def test_ground_truth_round_trip_equals_the_generators_parts():
    cfg = SpuriousWorldConfig(image_size=48, n_train=4)
    rows = [sample_rows(cfg, "train", i) for i in range(4)]
    table = {r["image_id"]: {p["part"]: p["rle"] for p in parts} for r, parts in rows}
    seg = GroundTruth(lambda image_id: table[image_id])
    for i, (image_row, _) in enumerate(rows):
        sample = render_sample(cfg, "train", i)
        seg.set_image(decode_rgb(image_row["image"]), image_row["image_id"])
        concepts = [f"small {p}s" for p in sample.parts]
        for m, (part, truth) in zip(seg.predict(concepts), sample.parts.items(), strict=True):
            assert m.status == "ok", (part, m.note)
            assert np.array_equal(m.mask, truth)
            assert np.array_equal(decode(encode(m.mask)), truth)


def test_ground_truth_missing_part_is_empty_and_wrong_size_is_error():
    seg = _build("ground_truth")
    seg.set_image(_rgb(), "img-1")
    beak, wing = seg.predict(["beak", "wing"])
    assert beak.status == "empty" and "no ground-truth part" in beak.note
    assert wing.status == "ok"
    seg.set_image(_rgb(20, 20), "img-1")
    assert seg.predict(["wing"])[0].status == "error"


# ----------------------------------------------------------------------------- bad images


def _mask_dir(root, lookup) -> str:
    for image_id, parts in lookup.items():
        (root / image_id).mkdir(parents=True)
        for part, rle in parts.items():
            Image.fromarray(decode(rle).astype(np.uint8) * 255).save(root / image_id / f"{part}.png")
    return str(root)


def test_actor_rows_cover_every_image_and_concept_with_reasons(tmp_path):
    cfg = {"name": "ground_truth", "ground_truth": {"mask_dir": _mask_dir(tmp_path, _gt_lookup())}}
    actor = SegmenterActor(cfg, {"bird": ["long beak", "wings"], "tree": []})
    batch = {
        "image_id": np.array(["img-0", "img-1", "bad", "odd"], dtype=object),
        "class_name": np.array(["bird", "bird", "bird", "tree"], dtype=object),
        "image": np.array([_png(_rgb()), _png(_rgb()), b"", _png(_rgb())], dtype=object),
    }
    rows = actor(batch)
    assert tuple(rows) == MASK_COLUMNS
    got = list(zip(rows["image_id"], rows["concept"], rows["status"], strict=True))
    assert got == [
        ("img-0", "long beak", "ok"),
        ("img-0", "wings", "ok"),
        ("img-1", "long beak", "empty"),
        ("img-1", "wings", "ok"),
        ("bad", "long beak", "error"),
        ("bad", "wings", "error"),
        ("odd", "", "error"),
    ]
    assert "0 bytes" in rows["error"][4] and "no concepts" in rows["error"][6]
    ok = rows["status"] == "ok"
    assert all(r["size"] == [48, 64] for r in rows["rle"][ok])
    assert rows["bbox"][0] == [10, 5, 30, 15]
    assert all(r is None for r in rows["rle"][~ok])


def test_actor_cleans_concept_lists():
    actor = SegmenterActor(
        {"name": "ground_truth", "ground_truth": {"mask_dir": "."}},
        {"bird": ["long beak", "Long  Beak", " ", "wing"]},
    )
    assert actor.concepts == {"bird": ["long beak", "wing"]}


def test_images_too_small_or_too_thin_never_reach_the_segmenter():
    """A 1x1 and a 1x4000 image used to fail inside grounded_sam's resizing; they are refused from
    the image header with what is allowed, and the model never sees them."""
    actor = SegmenterActor(_config("grounded_sam").model_dump(), {"bird": ["long beak", "wings"]})
    seen: list[str] = []
    set_image = actor.segmenter.set_image
    actor.segmenter.set_image = lambda image, image_id="": (seen.append(image_id), set_image(image, image_id))
    batch = {
        "image_id": np.array(["dot", "strip", "fine"], dtype=object),
        "class_name": np.array(["bird"] * 3, dtype=object),
        "image": np.array([_png(_rgb(1, 1)), _png(_rgb(1, 4000)), _png(_rgb())], dtype=object),
    }
    rows = actor(batch)
    assert seen == ["fine"]
    status = dict(zip(zip(rows["image_id"], rows["concept"], strict=True), rows["status"], strict=True))
    assert [status[("dot", c)] for c in ("long beak", "wings")] == ["error", "error"]
    assert all(status[("fine", c)] != "error" for c in ("long beak", "wings"))
    errors = dict(zip(rows["image_id"], rows["error"], strict=False))
    assert "image is 1x1 px" in errors["dot"] and "image is 1x4000 px" in errors["strip"]
    assert "both sides >= 8 px" in errors["strip"] and "grounded_sam failed" not in errors["strip"]
