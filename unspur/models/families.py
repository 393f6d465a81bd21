"""Registry of model families (``model.family``): how a model of that family is configured and built.

Only ``timm`` (classifiers: ``ModelConfig`` -> :func:`unspur.models.registry.build_model`) exists
so far; it is registered by ``unspur.models.registry`` on import. A family registers its config
class and builder with ``FAMILIES.add(name, builder, ConfigClass)``.
"""

from __future__ import annotations

from unspur.registry import Registry

__all__ = ["FAMILIES"]

#: family name -> builder ``(config) -> nn.Module``; config: the family's model config class
FAMILIES: Registry = Registry("model family")
