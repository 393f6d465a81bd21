"""The ``model`` section of a config: one config class per model family, picked by ``family``.

:data:`MODEL_FAMILIES` maps a family name to its config class (the config vocabulary; the
implementations register in ``unspur.models.families.FAMILIES`` under the same names and carry
the same class). ``model: {name: vit_tiny_synth}`` is a ``timm`` :class:`ModelConfig`;
``model: {family: clip, name: ViT-B-32, pretrained: openai}`` a :class:`ClipModelConfig`.
The config classes live here, not beside their families, so validating a config never imports
timm or open_clip.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from unspur.config.base import StrictModel, validate_config
from unspur.config.registered import registered
from unspur.registry import Registry

__all__ = [
    "MODEL_FAMILIES",
    "ClipModelConfig",
    "ModelConfig",
    "ModelSection",
    "model_config_class",
    "validate_model_config",
]

#: family name -> its model config class (no factory: the families register in unspur.models.families)
MODEL_FAMILIES: Registry[None] = Registry("model family")


class ModelConfig(StrictModel):
    """A classifier of the ``timm`` family: a registered tiny config (``unspur.models.MODELS``) or
    any timm model name.

    ``pretrained`` loads timm's weights (needs the hub; a cluster concern). ``checkpoint`` is an
    unspur checkpoint folder (``model.safetensors`` + ``config.yaml``) whose weights are loaded
    after building. ``kwargs`` go to the factory (e.g. ``{depth: 2}`` or timm's ``drop_rate``).
    """

    family: Literal["timm"] = "timm"
    name: str = "vit_tiny_synth"
    pretrained: bool = False
    num_classes: int = Field(4, ge=2)
    img_size: int = Field(64, ge=8, description="pixels")
    checkpoint: str | None = None
    kwargs: dict[str, Any] = {}


class ClipModelConfig(StrictModel):
    """A CLIP model of the ``clip`` family (open_clip), classifying zero-shot.

    ``name``: an open_clip architecture (``open_clip.list_models()``, e.g. ``ViT-B-32``) or one of
    unspur's tiny ones (``unspur-tiny-clip``). ``pretrained``: an open_clip pretrained tag (e.g.
    ``openai``; downloads on a cluster) or a weights file; None = random init. ``checkpoint``: an
    unspur checkpoint folder loaded after building. ``img_size``: input side in pixels (the
    architecture's is overridden when it differs). Zero-shot classifier: class ``i``'s text
    embedding is the renormalised mean of the normalised embeddings of ``templates`` (each with
    one ``{}`` for the class name) filled with ``classes[i]``; the pipeline fills ``classes``
    from the data (label order). ``kwargs`` go to ``open_clip.create_model``.
    """

    family: Literal["clip"] = "clip"
    name: str = "unspur-tiny-clip"
    pretrained: str | None = None
    img_size: int = Field(64, ge=8, description="pixels")
    checkpoint: str | None = None
    templates: list[str] = ["a photo of a {}.", "a picture of a {}.", "an image of a {}."]
    classes: list[str] = []
    kwargs: dict[str, Any] = {}

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: list[str]) -> list[str]:
        bad = [t for t in value if t.count("{}") != 1]
        if not value or bad:
            raise ValueError(
                f"templates must be a non-empty list of captions each holding one '{{}}' for the "
                f"class name, got {bad or value}"
            )
        return value

    @property
    def num_classes(self) -> int:
        """The number of zero-shot classes (``len(classes)``; 0 until they are filled)."""
        return len(self.classes)


MODEL_FAMILIES.add("timm", config=ModelConfig)
MODEL_FAMILIES.add("clip", config=ClipModelConfig)

#: annotated type of a ``model`` section: validated by the config class its ``family`` picks
ModelSection = registered(MODEL_FAMILIES, key="family", default="timm")


def model_config_class(section: dict[str, Any]) -> type[StrictModel]:
    """The config class of the family a ``model`` mapping names (``timm`` without ``family``)."""
    return MODEL_FAMILIES.entry(section.get("family", "timm")).config


def validate_model_config(section: dict[str, Any], source: str = "<dict>") -> Any:
    """Validate a ``model`` mapping against its family's config class (ConfigError otherwise)."""
    return validate_config(model_config_class(section), section, source=source)
