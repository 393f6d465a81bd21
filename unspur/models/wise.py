"""WiSE-FT (Wortsman et al., CVPR 2022): the weight-space average of a zero-shot model and its
fine-tuned version, theta = (1 - alpha) * theta_zero_shot + alpha * theta_fine_tuned.

alpha = 0 is the zero-shot model, 1 the fine-tuned one. Floating-point tensors are averaged (in
float32, cast back to the fine-tuned tensor's dtype); other tensors (integer buffers such as
BatchNorm's ``num_batches_tracked``) are taken from the fine-tuned model. Both must have the same
keys and shapes (one architecture); otherwise :class:`WiseError` names the first offending keys.
A baseline of StarFT (METHODS.md 3).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from unspur.models.attention import unwrap
from unspur.models.checkpoint import (
    CheckpointError,
    checkpoint_model_config,
    read_extra,
    save_checkpoint,
)

__all__ = ["WiseError", "wise_ft", "wise_ft_checkpoint"]

StateLike = nn.Module | Mapping[str, torch.Tensor]


class WiseError(ValueError):
    """The two models cannot be averaged: other keys, shapes, or an alpha outside [0, 1]."""


def _state(model: StateLike) -> Mapping[str, torch.Tensor]:
    return unwrap(model).state_dict() if isinstance(model, nn.Module) else model


def wise_ft(zero_shot: StateLike, finetuned: StateLike, alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """The WiSE-FT state dict ``(1 - alpha) * zero_shot + alpha * finetuned`` (modules or state
    dicts; tensors detached, on the fine-tuned tensor's device). ``alpha`` in [0, 1]."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise WiseError(f"alpha must be in [0, 1] (0 = zero-shot, 1 = fine-tuned), got {alpha}")
    zs, ft = _state(zero_shot), _state(finetuned)
    only_zs, only_ft = sorted(set(zs) - set(ft)), sorted(set(ft) - set(zs))
    if only_zs or only_ft:
        raise WiseError(
            "the zero-shot and fine-tuned models have different keys (not one architecture): "
            f"only in zero-shot {only_zs[:3]}, only in fine-tuned {only_ft[:3]}"
        )
    out: dict[str, torch.Tensor] = {}
    for key, tuned in ft.items():
        base = zs[key]
        if tuple(base.shape) != tuple(tuned.shape):
            raise WiseError(
                f"key {key!r} has shape {tuple(base.shape)} in the zero-shot model but "
                f"{tuple(tuned.shape)} in the fine-tuned one (not one architecture)"
            )
        tuned = tuned.detach()
        if tuned.is_floating_point() and base.is_floating_point():
            mixed = torch.lerp(base.detach().to(tuned.device, torch.float32), tuned.float(), float(alpha))
            out[key] = mixed.to(tuned.dtype)
        else:
            out[key] = tuned.clone()
    return out


def wise_ft_checkpoint(
    zero_shot_dir: str | Path, finetuned_dir: str | Path, out_dir: str | Path, alpha: float = 0.5
) -> Path:
    """Write the WiSE-FT model of two unspur checkpoint folders to ``out_dir`` (a checkpoint
    folder: the fine-tuned checkpoint's model config, ``extra.json`` with ``wise_ft``: alpha and both
    sources). Both must hold the same architecture (CheckpointError otherwise). Returns the folder."""
    from unspur.models.families import load_checkpoint

    zero_shot_dir, finetuned_dir = Path(zero_shot_dir), Path(finetuned_dir)
    zs_cfg, ft_cfg = checkpoint_model_config(zero_shot_dir), checkpoint_model_config(finetuned_dir)
    arch = ("family", "name", "num_classes", "img_size")
    if any(getattr(zs_cfg, a, None) != getattr(ft_cfg, a, None) for a in arch):
        raise CheckpointError(
            f"WiSE-FT needs one architecture: {zero_shot_dir} holds {zs_cfg.name} and {finetuned_dir} "
            f"holds {ft_cfg.name} ({', '.join(arch)} must match)"
        )
    zs_model, _ = load_checkpoint(zero_shot_dir)
    ft_model, _ = load_checkpoint(finetuned_dir)
    ft_model.load_state_dict(wise_ft(zs_model, ft_model, alpha), strict=True)
    extra = {
        **read_extra(finetuned_dir),
        "wise_ft": {"alpha": float(alpha), "zero_shot": str(zero_shot_dir), "finetuned": str(finetuned_dir)},
    }
    return save_checkpoint(out_dir, ft_model, ft_cfg, extra=extra)
