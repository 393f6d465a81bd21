"""WiSE-FT: the weight-space average of a zero-shot and a fine-tuned model, and its checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from unspur.config import ClipModelConfig
from unspur.models import CheckpointError, load_checkpoint, read_extra, save_checkpoint
from unspur.models.families import get_family
from unspur.models.wise import WiseError, wise_ft, wise_ft_checkpoint

CFG = ClipModelConfig(classes=["bird", "tree"], img_size=32)


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    zero_shot = get_family("clip").build(CFG)
    torch.manual_seed(1)
    finetuned = get_family("clip").build(CFG)
    return zero_shot, finetuned


def test_alpha_0_1_and_half_on_a_tiny_clip() -> None:
    zero_shot, finetuned = _pair()
    zs, ft = zero_shot.state_dict(), finetuned.state_dict()
    assert any(not torch.equal(zs[k], ft[k]) for k in zs)
    for alpha, expect in ((0.0, lambda a, b: a), (1.0, lambda a, b: b), (0.5, lambda a, b: (a + b) / 2)):
        mixed = wise_ft(zero_shot, finetuned, alpha)
        assert set(mixed) == set(ft)
        for key, value in mixed.items():
            assert value.dtype == ft[key].dtype and value.shape == ft[key].shape
            if ft[key].is_floating_point():
                torch.testing.assert_close(value, expect(zs[key], ft[key]), rtol=1e-6, atol=1e-6)
            else:
                assert torch.equal(value, ft[key])
    finetuned.load_state_dict(wise_ft(zs, ft, 0.5), strict=True)  # state dicts work too


def test_non_float_buffers_come_from_the_finetuned_model() -> None:
    zero_shot, finetuned = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    finetuned.num_batches_tracked.fill_(7)
    with torch.no_grad():
        finetuned.weight.fill_(3.0)
    mixed = wise_ft(zero_shot, finetuned, 0.5)
    assert int(mixed["num_batches_tracked"]) == 7 and mixed["num_batches_tracked"].dtype == torch.long
    torch.testing.assert_close(mixed["weight"], torch.full((3,), 2.0))


def test_mismatched_keys_shapes_and_alpha_are_refused() -> None:
    with pytest.raises(WiseError, match=r"'weight' has shape \(4, 3\).*\(5, 3\)"):
        wise_ft(nn.Linear(3, 4), nn.Linear(3, 5))
    with pytest.raises(WiseError, match=r"only in zero-shot \['bias'\]"):
        wise_ft(nn.Linear(3, 4), nn.Linear(3, 4, bias=False))
    with pytest.raises(WiseError, match="alpha"):
        wise_ft(nn.Linear(3, 4), nn.Linear(3, 4), 1.5)


def test_checkpoint_folder_from_two_checkpoints(tmp_path: Path) -> None:
    zero_shot, finetuned = _pair()
    save_checkpoint(tmp_path / "zs", zero_shot, CFG)
    save_checkpoint(tmp_path / "ft", finetuned, CFG, extra={"epoch": 3})
    out = wise_ft_checkpoint(tmp_path / "zs", tmp_path / "ft", tmp_path / "wise", alpha=0.25)
    model, _ = load_checkpoint(out)
    expected = wise_ft(zero_shot, finetuned, 0.25)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key])
    extra = read_extra(out)
    assert extra["epoch"] == 3 and extra["wise_ft"]["alpha"] == 0.25
    other = ClipModelConfig(classes=["bird", "tree"], img_size=48)
    save_checkpoint(tmp_path / "other", get_family("clip").build(other), other)
    with pytest.raises(CheckpointError, match="one architecture"):
        wise_ft_checkpoint(tmp_path / "zs", tmp_path / "other", tmp_path / "bad")
