"""Configs of ``unspur concepts``: class source, LLM sampling, backends, filters."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from unspur.config.base import StrictModel

__all__ = [
    "CONCEPT_KINDS",
    "ConceptClassesConfig",
    "ConceptFilterConfig",
    "ConceptSamplingConfig",
    "ConceptSimilarityConfig",
    "ConceptTransformersConfig",
    "ConceptVLLMConfig",
    "ConceptWordNetConfig",
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


class ConceptVLLMConfig(StrictModel):
    """``backend: vllm``: Ray Data LLM processor (``ray.data.llm``) over vLLM engine replicas.

    ``concurrency`` engine replicas, each on ``tensor_parallel_size`` GPUs of
    ``accelerator_type`` (None = any); ``engine_kwargs`` go to vLLM as they are.
    ``structured_outputs`` constrains decoding to a JSON list of strings.
    """

    engine_kwargs: dict[str, Any] = {"max_model_len": 4096}
    tensor_parallel_size: int = 1
    concurrency: int = 1
    batch_size: int = 32
    accelerator_type: str | None = None
    structured_outputs: bool = True

    @model_validator(mode="after")
    def _check(self) -> ConceptVLLMConfig:
        if min(self.tensor_parallel_size, self.concurrency, self.batch_size) < 1:
            raise ValueError("vllm.tensor_parallel_size, vllm.concurrency and vllm.batch_size must be >= 1")
        return self


class ConceptTransformersConfig(StrictModel):
    """``backend: transformers``: a Hugging Face causal LM in ``pool_size`` Ray Data actors."""

    device: str = "cpu"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    trust_remote_code: bool = False
    pool_size: int = 1
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    batch_size: int = 8

    @model_validator(mode="after")
    def _check(self) -> ConceptTransformersConfig:
        if self.pool_size < 1 or self.batch_size < 1:
            raise ValueError("transformers.pool_size and transformers.batch_size must be >= 1")
        if self.num_cpus < 0 or self.num_gpus < 0 or self.num_cpus + self.num_gpus == 0:
            raise ValueError(f"an actor needs num_cpus or num_gpus > 0, got {self.num_cpus}, {self.num_gpus}")
        return self


class ConceptWordNetConfig(StrictModel):
    """``backend: wordnet``: part meronyms -> important, hypernyms -> superclass (offline).

    ``synsets`` pins a class to a sense (``{"crane": "crane.n.05"}``; default: the first noun
    sense); ``meronym_depth`` 1 = direct parts, 2 = also the parts' parts; ``lemmas`` ``first``
    (the synset's head word) or ``all`` synonyms; ``hypernym_depth`` levels above the class.
    """

    synsets: dict[str, str] = {}
    meronym_depth: int = 2
    lemmas: Literal["first", "all"] = "first"
    substance_meronyms: bool = False
    hypernym_depth: int = 3

    @model_validator(mode="after")
    def _check(self) -> ConceptWordNetConfig:
        if self.meronym_depth < 1 or self.hypernym_depth < 1:
            raise ValueError("wordnet.meronym_depth and wordnet.hypernym_depth must be >= 1")
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


class ConceptsConfig(StrictModel):
    """``unspur concepts``: class names -> proposer -> parse -> filter -> concept bank.

    ``backend``: ``wordnet`` / ``bank`` (offline), ``transformers`` / ``vllm`` (an LLM named by
    ``model``: a Hugging Face id or a local folder). ``bank_path``: the user's YAML/JSON bank
    for ``backend: bank``. ``kinds``: Label-free CBM prompt kinds; ``spurious_kinds``: StarFT
    spurious-description template pools ([] = none). Generations are cached under
    ``cache_dir`` (default ``<out>/cache``), keyed by class, prompt version, backend, model and
    sampling; ``num_cpus`` is the CPU share of each offline-proposer / filter actor.
    """

    out: str = "runs/concepts"
    classes: ConceptClassesConfig = Field(default_factory=ConceptClassesConfig)
    backend: Literal["wordnet", "bank", "transformers", "vllm"] = "wordnet"
    model: str = ""
    bank_path: str | None = None
    kinds: list[Literal["important", "superclass", "around"]] = list(CONCEPT_KINDS)
    spurious_kinds: list[str] = ["background", "texture", "resolution"]
    sampling: ConceptSamplingConfig = Field(default_factory=ConceptSamplingConfig)
    vllm: ConceptVLLMConfig = Field(default_factory=ConceptVLLMConfig)
    transformers: ConceptTransformersConfig = Field(default_factory=ConceptTransformersConfig)
    wordnet: ConceptWordNetConfig = Field(default_factory=ConceptWordNetConfig)
    similarity: ConceptSimilarityConfig = Field(default_factory=ConceptSimilarityConfig)
    filters: ConceptFilterConfig = Field(default_factory=ConceptFilterConfig)
    cache_dir: str | None = None
    use_cache: bool = True
    num_cpus: float = 0.25
    experiment: str = "concepts"
    track: bool = True

    @model_validator(mode="after")
    def _check(self) -> ConceptsConfig:
        if self.backend in ("transformers", "vllm") and not self.model:
            raise ValueError(
                f"backend={self.backend} needs model (a Hugging Face id or a local model folder)"
            )
        if self.backend == "bank" and not self.bank_path:
            raise ValueError("backend=bank needs bank_path (a YAML/JSON concept bank)")
        if not self.kinds and not self.spurious_kinds:
            raise ValueError("kinds and spurious_kinds are both empty: nothing to propose")
        for name, items in (("kinds", self.kinds), ("spurious_kinds", self.spurious_kinds)):
            if len(set(items)) != len(items):
                raise ValueError(f"{name} has repeats: {items}")
        bad = [k for k in self.spurious_kinds if not k.replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"spurious_kinds must be plain words (letters, digits, _), got {bad}")
        if self.num_cpus <= 0:
            raise ValueError(f"num_cpus must be > 0, got {self.num_cpus}")
        return self
