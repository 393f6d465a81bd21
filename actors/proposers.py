"""Concept proposers: one per backend, selected by name (``ConceptsConfig.backend``).

Every proposer answers *request rows* (one generation each: ``request_id``, ``family``,
``class_name``, ``kind``, ``sample``, ``seed``, ``source``) with three columns added:
``raw`` (the answer text, parsed later by :func:`unspur.actors.concepts.parse_answer`), ``error``
(why it failed, or why an answer is empty) and ``failed`` (an exception: not cached, retried
on the next run). Offline sources answer with a JSON list of ``{concept, score}``.

- ``wordnet``: part meronyms (and their parts) -> important, hypernyms -> superclass; spurious
  templates from the built-in bank (:mod:`unspur.actors.spurious_bank`). WordNet knows no
  "seen around" relation: that kind is unavailable.
- ``bank``: a user's YAML/JSON concept bank (:func:`unspur.concept_bank.read_bank_source`).
- ``transformers``: any Hugging Face causal LM, chat template applied, sampled per row.
- ``vllm``: row functions for ``ray.data.llm`` (the processor is built in the workflow).

Actors follow the Ray Data convention: load in ``__init__``, ``__call__(batch of numpy
columns) -> batch``. No ray import here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from unspur.actors.concepts import ANSWER_SCHEMA, build_messages, normalize_class_name
from unspur.actors.spurious_bank import template_answer
from unspur.concept_bank import read_bank_source
from unspur.config.base import ActorResources, StrictModel
from unspur.config.concepts import CONCEPT_BACKENDS

__all__ = [
    "ConceptTransformersConfig",
    "ConceptVLLMConfig",
    "ConceptWordNetConfig",
    "REQUEST_COLUMNS",
    "ProposerSpec",
    "PROPOSERS",
    "WordNetMissingError",
    "load_wordnet",
    "wordnet_concepts",
    "WordNetProposer",
    "BankProposer",
    "TransformersProposer",
    "VLLMRowFunctions",
]

REQUEST_COLUMNS = ("request_id", "family", "class_name", "kind", "sample", "seed", "source")
WORDNET_INSTALL = "apt-get install wordnet-base wordnet-sense-index; python scripts/install_wordnet.py"


def _rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    keys = list(batch)
    n = len(batch[keys[0]]) if keys else 0
    return [{k: batch[k][i] for k in keys} for i in range(n)]


def _answer_batch(
    batch: dict[str, np.ndarray], answer: Callable[[dict[str, Any]], tuple[str, str]]
) -> dict[str, np.ndarray]:
    """Apply ``answer(row) -> (raw, error)`` to every row; an exception becomes a failed row."""
    raws, errors, failed = [], [], []
    for row in _rows(batch):
        try:
            raw, error = answer(row)
            bad = False
        except Exception as err:  # noqa: BLE001 - one bad request must not kill the job
            raw, error, bad = "", f"{type(err).__name__}: {err}", True
        raws.append(raw)
        errors.append(error)
        failed.append(bad)
    out = dict(batch)
    out["raw"] = np.array(raws, dtype=object)
    out["error"] = np.array(errors, dtype=object)
    out["failed"] = np.array(failed, dtype=bool)
    return out


# --- wordnet -----------------------------------------------------------------------------


class WordNetMissingError(RuntimeError):
    """nltk cannot find the WordNet database."""


def load_wordnet() -> Any:
    """Return nltk's loaded WordNet reader, or raise :class:`WordNetMissingError` with the fix."""
    try:
        from nltk.corpus import wordnet as wn

        wn.ensure_loaded()
    except LookupError as err:
        raise WordNetMissingError(
            f"the WordNet database is not installed for nltk (backend=wordnet needs it); run: "
            f"{WORDNET_INSTALL}"
        ) from err
    return wn


def _names(synset: Any, lemmas: str) -> list[str]:
    names = synset.lemma_names()
    return [n.replace("_", " ") for n in (names if lemmas == "all" else names[:1])]


def _walk(start: Any, step: Callable[[Any], list[Any]], depth: int) -> list[tuple[Any, int]]:
    """Breadth-first (synset, level) pairs reachable from ``start`` in 1..depth steps."""
    seen, frontier, found = {start}, [start], []
    for level in range(1, depth + 1):
        nxt = []
        for synset in frontier:
            for child in step(synset):
                if child not in seen:
                    seen.add(child)
                    nxt.append(child)
                    found.append((child, level))
        frontier = nxt
    return found


def wordnet_concepts(
    wn: Any,
    class_name: str,
    kind: str,
    synset: str | None = None,
    meronym_depth: int = 2,
    lemmas: str = "first",
    substance_meronyms: bool = False,
    hypernym_depth: int = 3,
) -> tuple[list[dict[str, Any]], str]:
    """One class's WordNet concepts of ``kind`` as ``[{concept, score}]`` and a reason if empty.

    important = part meronyms up to ``meronym_depth`` levels (a meronym that is another sense of
    the class word is listed, for the class-name filter to drop, but not expanded); superclass =
    hypernyms up to ``hypernym_depth`` levels; score = 1 / level. ``synset`` pins the sense
    (default: the first noun sense of the class name).
    """
    if synset:
        try:
            sense = wn.synset(synset)
        except Exception as err:  # nltk raises WordNetError / ValueError for bad names
            return (
                [],
                f"wordnet.synsets gives {synset!r} for {class_name!r}, which WordNet does not know ({err})",
            )
    else:
        senses = wn.synsets(normalize_class_name(class_name).replace(" ", "_"), pos=wn.NOUN)
        if not senses:
            return [], (
                f"WordNet has no noun sense of {class_name!r}; pin a sense in the config "
                f"(wordnet.synsets: {{{class_name!r}: <synset, e.g. dog.n.01>}}) or use another backend"
            )
        sense = senses[0]
    lemma = sense.lemma_names()[0]
    if kind == "important":

        def step(s: Any) -> list[Any]:
            if s != sense and lemma in s.lemma_names():
                return []  # another sense of the class word (bird.n.01 lists bird.n.02, the meat)
            return s.part_meronyms() + (s.substance_meronyms() if substance_meronyms else [])

        found = _walk(sense, step, meronym_depth)
    elif kind == "superclass":
        found = _walk(sense, lambda s: s.hypernyms() + s.instance_hypernyms(), hypernym_depth)
    else:
        return [], f"WordNet has no relation for kind {kind!r}"
    items = [
        {"concept": name, "score": round(1.0 / level, 4)} for s, level in found for name in _names(s, lemmas)
    ]
    reason = "" if items else f"WordNet lists no {kind} concepts for {sense.name()}"
    return items, reason


class WordNetProposer:
    """Offline proposer over WordNet (nltk). Constructor kwargs: :class:`ConceptWordNetConfig`."""

    def __init__(
        self,
        synsets: dict[str, str] | None = None,
        meronym_depth: int = 2,
        lemmas: str = "first",
        substance_meronyms: bool = False,
        hypernym_depth: int = 3,
    ) -> None:
        self.wn = load_wordnet()
        self.synsets = dict(synsets or {})
        self.options = dict(
            meronym_depth=meronym_depth,
            lemmas=lemmas,
            substance_meronyms=substance_meronyms,
            hypernym_depth=hypernym_depth,
        )

    def answer(self, row: dict[str, Any]) -> tuple[str, str]:
        if row["family"] == "spurious":
            return template_answer(str(row["kind"]))  # WordNet has none: the built-in bank
        items, reason = wordnet_concepts(
            self.wn,
            str(row["class_name"]),
            str(row["kind"]),
            self.synsets.get(str(row["class_name"])),
            **self.options,
        )
        return json.dumps(items, ensure_ascii=False), reason

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _answer_batch(batch, self.answer)


# --- bank ----------------------------------------------------------------------------------


class BankProposer:
    """Answers from a user's concept bank file (YAML/JSON); a missing class is an empty answer."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.source = read_bank_source(path)
        self.by_name = {normalize_class_name(k).casefold(): v for k, v in self.source["concepts"].items()}

    def answer(self, row: dict[str, Any]) -> tuple[str, str]:
        kind = str(row["kind"])
        if row["family"] == "spurious":
            items = self.source["spurious_templates"].get(kind, [])
            reason = "" if items else f"the bank {self.path} has no spurious templates of kind {kind!r}"
        else:
            per_kind = self.by_name.get(normalize_class_name(str(row["class_name"])).casefold())
            if per_kind is None:
                return "[]", f"class {row['class_name']!r} is not in the bank {self.path}"
            items = per_kind.get(kind, [])
            reason = (
                "" if items else f"the bank {self.path} has no {kind!r} concepts for {row['class_name']!r}"
            )
        return json.dumps([{"concept": t, "score": s} for t, s in items], ensure_ascii=False), reason

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _answer_batch(batch, self.answer)


# --- transformers ----------------------------------------------------------------------------


class TransformersProposer:
    """A Hugging Face causal LM (a hub id or a local folder) answering one request per row.

    The tokenizer's chat template renders the messages (a plain "role: text" transcript when the
    tokenizer has none); sampling is seeded per row (``seed``), so a request is reproducible.
    """

    def __init__(
        self,
        model: str,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 256,
        device: str = "cpu",
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        self.model = (
            AutoModelForCausalLM.from_pretrained(
                model, dtype=torch_dtype, trust_remote_code=trust_remote_code
            )
            .to(device)
            .eval()
        )
        self.device = device
        self.sampling = dict(temperature=temperature, top_p=top_p, max_tokens=max_tokens)

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text: the chat template with the generation prompt, or a plain transcript."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

    def answer(self, row: dict[str, Any]) -> tuple[str, str]:
        messages = build_messages(str(row["family"]), str(row["kind"]), str(row["class_name"]))
        enc = self.tokenizer(self.render(messages), return_tensors="pt", add_special_tokens=False).to(
            self.device
        )
        temperature = self.sampling["temperature"]
        pad = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        self.torch.manual_seed(int(row["seed"]))
        with self.torch.no_grad():
            ids = self.model.generate(
                **enc,
                max_new_tokens=self.sampling["max_tokens"],
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=self.sampling["top_p"] if temperature > 0 else None,
                pad_token_id=pad,
            )
        new = ids[0, enc["input_ids"].shape[1] :]
        return self.tokenizer.decode(new, skip_special_tokens=True), ""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _answer_batch(batch, self.answer)


# --- vllm ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VLLMRowFunctions:
    """``preprocess`` / ``postprocess`` for ``ray.data.llm.build_processor`` (vLLM engine).

    preprocess: request row -> ``messages`` + ``sampling_params`` (JSON-list structured output
    when ``structured``). postprocess: engine row -> request columns + raw / error / failed.
    """

    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    structured: bool = True

    def preprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = dict(
            temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, seed=int(row["seed"])
        )
        if self.structured:
            params["structured_outputs"] = {"json": json.dumps(ANSWER_SCHEMA)}
        messages = build_messages(str(row["family"]), str(row["kind"]), str(row["class_name"]))
        return {"messages": messages, "sampling_params": params}

    def postprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {k: row[k] for k in REQUEST_COLUMNS}
        text = row.get("generated_text")
        out.update(raw=str(text) if text is not None else "", error="", failed=False)
        return out


# --- registry --------------------------------------------------------------------------------

ALL_KINDS = ("important", "superclass", "around")


@dataclass(frozen=True)
class ProposerSpec:
    """What a backend can answer, and how the workflow builds it.

    ``kinds``: concept kinds it answers; ``spurious``: whether it writes spurious templates;
    ``llm``: sampled (``n_samples`` per prompt, sampling in the cache key) or deterministic
    (one answer per prompt); ``unavailable``: kind -> why not (written into the bank);
    ``actor``/``kwargs(cfg)``: the Ray Data actor class and its constructor kwargs (None for
    vllm, whose processor the workflow builds from :class:`VLLMRowFunctions`).
    """

    name: str
    kinds: tuple[str, ...]
    spurious: bool
    llm: bool
    unavailable: dict[str, str] = field(default_factory=dict)
    actor: type | None = None
    kwargs: Callable[[Any], dict[str, Any]] = lambda cfg: {}


def _transformers_kwargs(cfg: Any) -> dict[str, Any]:
    s, t = cfg.sampling, cfg.transformers
    return dict(
        model=cfg.model,
        temperature=s.temperature,
        top_p=s.top_p,
        max_tokens=s.max_tokens,
        device=t.device,
        dtype=t.dtype,
        trust_remote_code=t.trust_remote_code,
    )


# Backends register their ProposerSpec and settings class in the core registry
# ``unspur.config.concepts.CONCEPT_BACKENDS`` (the vocabulary of ``ConceptsConfig.backend``); a
# backend's settings sit under a key of its name (``wordnet:``, ``vllm:``, ``transformers:``).


class ConceptVLLMConfig(StrictModel):
    """``backend: vllm``: Ray Data LLM processor (``ray.data.llm``) over vLLM engine replicas.

    ``concurrency`` engine replicas, each on ``tensor_parallel_size`` GPUs of
    ``accelerator_type`` (None = any); ``engine_kwargs`` go to vLLM as they are.
    ``structured_outputs`` constrains decoding to a JSON list of strings.
    """

    engine_kwargs: dict[str, Any] = {"max_model_len": 4096}
    tensor_parallel_size: int = Field(1, ge=1)
    concurrency: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    accelerator_type: str | None = None
    structured_outputs: bool = True


class ConceptTransformersConfig(ActorResources):
    """``backend: transformers``: a Hugging Face causal LM in ``pool_size`` Ray Data actors."""

    device: str = "cpu"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    trust_remote_code: bool = False
    pool_size: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)


class ConceptWordNetConfig(StrictModel):
    """``backend: wordnet``: part meronyms -> important, hypernyms -> superclass (offline);
    spurious templates come from the built-in bank (:mod:`unspur.actors.spurious_bank`).

    ``synsets`` pins a class to a sense (``{"crane": "crane.n.05"}``; default: the first noun
    sense); ``meronym_depth`` 1 = direct parts, 2 = also the parts' parts; ``lemmas`` ``first``
    (the synset's head word) or ``all`` synonyms; ``hypernym_depth`` levels above the class.
    """

    synsets: dict[str, str] = {}
    meronym_depth: int = Field(2, ge=1)
    lemmas: Literal["first", "all"] = "first"
    substance_meronyms: bool = False
    hypernym_depth: int = Field(3, ge=1)


def _needs_model(cfg: Any) -> None:
    if not cfg.model:
        raise ValueError(f"backend={cfg.backend} needs model (a Hugging Face id or a local model folder)")


def _needs_bank_path(cfg: Any) -> None:
    if not cfg.bank_path:
        raise ValueError("backend=bank needs bank_path (a YAML/JSON concept bank)")


#: backend name -> spec (the config's ``backend`` vocabulary), with its settings class
PROPOSERS = CONCEPT_BACKENDS
PROPOSERS.add(
    "wordnet",
    ProposerSpec(
        "wordnet",
        ("important", "superclass"),
        spurious=True,
        llm=False,
        unavailable={"around": "WordNet has no 'commonly seen around' relation"},
        actor=WordNetProposer,
        kwargs=lambda cfg: cfg.wordnet.model_dump(),
    ),
    ConceptWordNetConfig,
)
PROPOSERS.add(
    "bank",
    ProposerSpec(
        "bank",
        ALL_KINDS,
        spurious=True,
        llm=False,
        actor=BankProposer,
        kwargs=lambda cfg: {"path": cfg.bank_path},
    ),
    check=_needs_bank_path,
)
PROPOSERS.add(
    "transformers",
    ProposerSpec(
        "transformers",
        ALL_KINDS,
        spurious=True,
        llm=True,
        actor=TransformersProposer,
        kwargs=_transformers_kwargs,
    ),
    ConceptTransformersConfig,
    check=_needs_model,
)
PROPOSERS.add(
    "vllm", ProposerSpec("vllm", ALL_KINDS, spurious=True, llm=True), ConceptVLLMConfig, check=_needs_model
)
