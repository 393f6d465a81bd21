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

    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    n_samples: int = 2
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> ConceptSamplingConfig:
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(
                f"need temperature >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}"
            )
        if self.max_tokens < 1 or self.n_samples < 1:
            raise ValueError(
                f"max_tokens and n_samples must be >= 1, got {self.max_tokens}, {self.n_samples}"
            )
        return self


class ConceptSimilarityConfig(StrictModel):
    """Text encoder for the similarity filters (``unspur.text_similarity.TEXT_ENCODERS``)."""

    encoder: Literal["minilm", "clip"] = "minilm"
    clip_model: str = "ViT-B-32"
    clip_pretrained: str | None = "openai"
    device: str = "cpu"
    batch_size: int = 256


class ConceptFilterConfig(StrictModel):
    """Label-free CBM filters, applied in this order (METHODS.md 1.1)."""

    max_length: int = 30
    class_similarity: float = 0.85
    duplicate_similarity: float = 0.9
    template_max_length: int = 80

    @model_validator(mode="after")
    def _check(self) -> ConceptFilterConfig:
        for name in ("class_similarity", "duplicate_similarity"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"filters.{name} must lie in (0, 1], got {getattr(self, name)}")
        if self.max_length < 1 or self.template_max_length < 1:
            raise ValueError("filters.max_length and filters.template_max_length must be >= 1")
        return self


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
