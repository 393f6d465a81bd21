"""Text encoders for the concept filters: MiniLM (shipped weights) and an open_clip text tower."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unspur.text_similarity import TEXT_ENCODERS, build_text_encoder, cosine_matrix


def test_cosine_matrix_shapes_and_values():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    sim = cosine_matrix(a, np.array([[2.0, 0.0]]))
    assert sim.shape == (2, 1) and np.allclose(sim[:, 0], [1.0, 2**-0.5])
    assert cosine_matrix(np.zeros((0, 2)), a).shape == (0, 2)


def test_minilm_unit_rows_and_sense():
    enc = build_text_encoder("minilm")
    emb = enc.encode(["bicycle", "bike", "beak", "bicycle wheel"])
    assert emb.shape == (4, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sim = cosine_matrix(emb, emb)
    assert sim[0, 1] > sim[0, 3] > sim[0, 2]  # synonym > part > another class's part
    assert enc.encode([]).shape == (0, 384)


def test_clip_text_encoder_from_a_tiny_config(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    path = tmp_path / "unspur-test-tiny-clip.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    enc = build_text_encoder("clip", clip_model="unspur-test-tiny-clip", clip_pretrained=None)
    emb = enc.encode(["a bird", "a tree", "a bird"])
    assert emb.shape == (3, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.allclose(emb[0], emb[2])
    assert enc.encode([]).shape == (0, 32)


def test_unknown_encoder_names_the_choices():
    with pytest.raises(ValueError, match="choose one of"):
        build_text_encoder("word2vec")
    assert set(TEXT_ENCODERS) == {"minilm", "clip"}
