"""SEraser's before/after examples: image, foreground view, background view, zero-shot vs tuned."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["examples_figure", "pick_examples"]


def pick_examples(pred: pd.DataFrame, n: int) -> list[str]:
    """Up to ``n`` tuned image ids: those whose prediction the tuning changed first, then the rest
    (each by image id)."""
    ok = pred[pred["status"] == "ok"].sort_values("image_id", kind="stable")
    changed = ok[ok["pred"] != ok["pred_before"]]
    rest = ok[ok["pred"] == ok["pred_before"]]
    return pd.concat([changed, rest])["image_id"].head(n).tolist()


def examples_figure(cfg: Any, inputs: Any, pred: pd.DataFrame, ids: list[str], masks: pa.Table) -> Any:
    """A grid, one row per example image of ``ids``: the image, its foreground and background views
    as the tuner saw them (``cfg.seraser.fill``; ``masks``: the job's mask index of those images),
    titled with the label and the zero-shot and tuned predictions; None without ids."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from unspur.actors.prompt_tuner import masks_frame
    from unspur.data.torch_dataset import ImageMaskDataset
    from unspur.models import checkpoint_model_config
    from unspur.seraser import make_views
    from unspur.workflows.image_table import read_table

    if not ids:
        return None
    columns = [c for c in inputs.columns if c in ("image_id", "image", "path", "label")]
    rows = read_table(inputs.images, columns, pc.field("image_id").isin(pa.array(ids, pa.string())))
    frame = rows.to_pandas().drop_duplicates("image_id").set_index("image_id").loc[ids].reset_index()
    frame = frame.merge(masks.to_pandas(), on="image_id", how="left")
    size = checkpoint_model_config(cfg.checkpoint).img_size
    data = ImageMaskDataset(
        frame, masks_frame(frame), img_size=size, mean=(0.0,) * 3, std=(1.0,) * 3, cache=False
    )
    by_id = pred.set_index("image_id")
    classes = inputs.classes
    fig, axes = plt.subplots(len(ids), 3, figsize=(7.5, 2.6 * len(ids)), squeeze=False)
    for r, image_id in enumerate(ids):
        item = data[r]
        fg, bg = make_views(item["image"], item["mask"] > 0.5, cfg.seraser, image_id)
        row = by_id.loc[image_id]
        title = (
            f"{image_id} ({classes[int(row['label'])]})\n"
            f"zero-shot: {classes[int(row['pred_before'])]}  tuned: {classes[int(row['pred'])]}"
        )
        for c, (name, image) in enumerate(
            (("image", item["image"]), ("foreground", fg[0]), ("background", bg[0]))
        ):
            ax = axes[r, c]
            ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_title(title if c == 0 else name, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    return fig
