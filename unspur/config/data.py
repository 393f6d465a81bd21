"""Configs of the synthetic data sets; each generator's config lives beside it in ``unspur.data``."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from unspur.config.registered import SectionedModel
from unspur.data.digits_grid import DigitsGridConfig
from unspur.data.kinds import DATA_KINDS
from unspur.data.spuriousworld import SpuriousWorldConfig
from unspur.registry import Registry

__all__ = ["DigitsGridConfig", "SpuriousWorldConfig", "SynthConfig"]


class SynthConfig(SectionedModel):
    """``unspur data synth``: render a synthetic benchmark in parallel into Parquet under ``out``.

    ``kind`` picks the generator (``unspur.data.kinds.DATA_KINDS``); its settings sit under a key
    of its name (``spuriousworld:``, ``digits_grid:``) and only its section is used.
    ``rows_per_block`` is the number of images one Ray Data task renders at a time.
    """

    registry: ClassVar[Registry] = DATA_KINDS
    selector: ClassVar[str] = "kind"

    out: str = "runs/synth"
    kind: str = "spuriousworld"
    rows_per_block: int = Field(250, ge=1)
