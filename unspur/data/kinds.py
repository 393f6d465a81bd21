"""Registry of synthetic data kinds (``SynthConfig.kind``): name -> generator config + row function.

A generator module registers its config class and ``sample_rows(cfg, split, index)`` with
``DATA_KINDS.add(name, sample_rows, ConfigClass)``; ``unspur.config.data`` imports the built-in
generators so they are registered whenever a config names them.
"""

from __future__ import annotations

from unspur.registry import Registry

__all__ = ["DATA_KINDS"]

#: data kind -> row function ``sample_rows(cfg, split, index)``; config: the generator's settings
DATA_KINDS: Registry = Registry("data kind")
