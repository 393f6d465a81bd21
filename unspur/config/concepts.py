"""Configs of ``unspur concepts``: class source, LLM sampling, backends, filters."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from unspur.config.base import StrictModel
from unspur.config.registered import SectionedModel
from unspur.registry import Registry

__all__ = [
    "CONCEPT_BACKENDS",
    "CONCEPT_KINDS",
    "ConceptClassesConfig",
    "ConceptFilterConfig",
    "ConceptSamplingConfig",
    "ConceptSimilarityConfig",
    "ConceptsConfig",
]


#: prompt kinds of the Label-free CBM family (ARCHITECTURE.md concept bank contract)
CONCEPT_KINDS = ("important", "superclass", "around")


class ConceptClassesConfig(StrictModel):
    """Where ``unspur concepts`` reads the class names.

    ``source``: ``names`` (the inline list), ``file`` (``path``: .txt one name a line, or a
    .json/.yaml list), ``table`` (``path``: a Parquet image table; distinct ``class_name`` in
    ``label`` order), ``spuriousworld`` (SpuriousWorld's default classes).
    """

    source: Literal["names", "file", "table", "spuriousworld"] = "spuriousworld"
    names: list[str] = []
    path: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ConceptClassesConfig:
        if self.source == "names" and not self.names:
            raise ValueError("classes.source=names needs a non-empty classes.names list")
        if self.source in ("file", "table") and not self.path:
            raise ValueError(f"classes.source={self.source} needs classes.path (the {self.source} to read)")
        return self


class ConceptSamplingConfig(StrictModel):
    """LLM sampling (Label-free CBM: temperature 0.7, 256 new tokens, 2 samples per prompt)."""

    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    n_samples: int = Field(2, ge=1)
    seed: int = 0


class ConceptSimilarityConfig(StrictModel):
    """Text encoder for the similarity filters (``unspur.text_similarity.TEXT_ENCODERS``)."""

    encoder: Literal["minilm", "clip"] = "minilm"
    clip_model: str = "ViT-B-32"
    clip_pretrained: str | None = "openai"
    device: str = "cpu"
    batch_size: int = 256


class ConceptFilterConfig(StrictModel):
    """Label-free CBM filters, applied in this order (METHODS.md 1.1)."""

    max_length: int = Field(30, ge=1)
    class_similarity: float = Field(0.85, gt=0, le=1)
    duplicate_similarity: float = Field(0.9, gt=0, le=1)
    template_max_length: int = Field(80, ge=1)


#: concept backend name -> ``ProposerSpec`` (what it answers, how the job builds it); config: its
#: settings section. The built-in backends are registered by ``unspur.actors.proposers``.
CONCEPT_BACKENDS: Registry = Registry(
    "concept backend", hint="the built-in backends are registered by importing unspur.actors.proposers"
)


class ConceptsConfig(SectionedModel):
    """``unspur concepts``: class names -> proposer -> parse -> filter -> concept bank.

    ``backend`` (:data:`CONCEPT_BACKENDS`; its settings sit under a key of its name, e.g.
    ``wordnet:``): ``wordnet`` / ``bank`` (offline), ``transformers`` / ``vllm`` (an LLM named by
    ``model``: a Hugging Face id or a local folder). ``bank_path``: the user's YAML/JSON bank
    for ``backend: bank``. ``kinds``: Label-free CBM prompt kinds; ``spurious_kinds``: StarFT
    spurious-description template pools ([] = none). Generations are cached under
    ``cache_dir`` (default ``<out>/cache``), keyed by class, prompt version, backend, model and
    sampling; ``num_cpus`` is the CPU share of each offline-proposer / filter actor.
    """

    out: str = "runs/concepts"
    classes: ConceptClassesConfig = Field(default_factory=ConceptClassesConfig)
    registry: ClassVar[Registry] = CONCEPT_BACKENDS
    selector: ClassVar[str] = "backend"

    backend: str = "wordnet"
    model: str = ""
    bank_path: str | None = None
    kinds: list[Literal["important", "superclass", "around"]] = list(CONCEPT_KINDS)
    spurious_kinds: list[str] = ["background", "texture", "resolution"]
    sampling: ConceptSamplingConfig = Field(default_factory=ConceptSamplingConfig)
    similarity: ConceptSimilarityConfig = Field(default_factory=ConceptSimilarityConfig)
    filters: ConceptFilterConfig = Field(default_factory=ConceptFilterConfig)
    cache_dir: str | None = None
    use_cache: bool = True
    num_cpus: float = Field(0.25, gt=0)
    experiment: str = "concepts"
    track: bool = True

    @model_validator(mode="after")
    def _check(self) -> ConceptsConfig:
        if not self.kinds and not self.spurious_kinds:
            raise ValueError("kinds and spurious_kinds are both empty: nothing to propose")
        for name, items in (("kinds", self.kinds), ("spurious_kinds", self.spurious_kinds)):
            if len(set(items)) != len(items):
                raise ValueError(f"{name} has repeats: {items}")
        bad = [k for k in self.spurious_kinds if not k.replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"spurious_kinds must be plain words (letters, digits, _), got {bad}")
        return self
