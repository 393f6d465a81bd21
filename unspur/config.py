"""Strict configuration models for every unspur workflow.

Each workflow has one pydantic model; unknown keys are rejected, defaults live here and
nowhere else. Configs load from YAML (``yaml.safe_load``) and take dotted overrides from the
command line (``train.lr=1e-4``). A bad config raises :class:`ConfigError` naming the file,
the key and what is allowed, before any compute starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "ConfigError",
    "StrictModel",
    "apply_overrides",
    "flatten",
    "load_config",
    "parse_overrides",
    "dump_config",
    "validate_config",
    "SpuriousWorldConfig",
    "TrainConfig",
    "FewShotConfig",
    "DigitsGridConfig",
    "SynthConfig",
    "EvaluateConfig",
    "ModelConfig",
    "LossConfig",
    "FinetuneConfig",
    "FinetuneDataConfig",
    "FinetuneRunConfig",
    "ConceptsConfig",
    "MasksConfig",
    "PipelineConfig",
    "PipelineDataConfig",
    "PipelineEvaluateConfig",
    "SweepConfig",
]

M = TypeVar("M", bound="StrictModel")


class ConfigError(ValueError):
    """A configuration a user wrote is wrong; the message names the input and the fix."""


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-4", "data.classes=[bird,tree]"]`` into a nested dict.

    Values are parsed as YAML scalars/flow collections, so numbers, booleans, lists work.
    """
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key part; write e.g. train.lr=1e-4")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from err
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return nested


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into a copy of ``base`` (dicts merge, everything else replaces)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = apply_overrides(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key (check the spelling; allowed keys are the model's fields)")
        else:
            lines.append(f"  {loc}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def validate_config(model: type[M], data: dict[str, Any], source: str = "<dict>") -> M:
    """Validate ``data`` against ``model``; raise :class:`ConfigError` listing every bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        _hint = _allowed_hint(model, err)
        raise ConfigError(_format_errors(err, source) + _hint) from None


def _allowed_hint(model: type[BaseModel], err: ValidationError) -> str:
    hints = []
    for e in err.errors():
        if e["type"] != "extra_forbidden":
            continue
        node: Any = model
        for part in e["loc"][:-1]:
            field = getattr(node, "model_fields", {}).get(part)
            ann = getattr(field, "annotation", None)
            node = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if node is None:
                break
        if node is not None:
            hints.append(
                f"  allowed at {'.'.join(map(str, e['loc'][:-1])) or '<root>'}: "
                + ", ".join(node.model_fields)
            )
    return ("\n" + "\n".join(dict.fromkeys(hints))) if hints else ""


def load_config(model: type[M], path: str | Path | None = None, overrides: list[str] | None = None) -> M:
    """Load ``path`` (YAML) into ``model``, applying dotted ``overrides``; None means defaults."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing YAML file")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping at top level, got {type(loaded).__name__}"
            )
        data = loaded
    if overrides:
        data = apply_overrides(data, parse_overrides(overrides))
        source += " + overrides " + " ".join(overrides)
    return validate_config(model, data, source)


def dump_config(cfg: BaseModel, path: str | Path) -> Path:
    """Write the resolved config as YAML that :func:`load_config` reads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def flatten(data: dict[str, Any] | BaseModel, prefix: str = "") -> dict[str, Any]:
    """Flatten nested config values to ``{"train.lr": 1e-4, ...}`` (for MLflow params)."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


# --- spuriousworld ---


class SpuriousWorldConfig(StrictModel):
    """SpuriousWorld: named-part objects pasted on named background textures.

    Train split: class i sits on ``backgrounds[i]`` with probability ``rho``, else on another
    background drawn uniformly. Val and test splits are balanced over every (class, background)
    group. ``object_scale`` is the object's half-extent as a fraction of half the image side;
    ``contrast`` in (0, 1] blends the object's colours with the background behind it (1 = opaque).
    ``color_jitter``: std of the per-image RGB noise on each part's class colour (larger = colour
    tells the class less, shape more).
    ``plate_margin`` > 0 puts the object on a neutral grey card (its box grown by that many pixels),
    so with a margin of at least the patch size no patch that touches the object sees background
    texture: the background's evidence lives in the background patches alone. The defaults are
    calibrated with ``finetune_base.yaml``: an ERM base learns the objects (balanced accuracy
    0.70-0.80) yet leans on the background (worst-group accuracy 0.00-0.49 over six seed runs,
    mostly below 0.25), see benchmarks/README.md.
    """

    image_size: int = 64
    classes: list[str] = ["bird", "airplane", "bicycle", "tree"]
    backgrounds: list[str] = ["water", "grass", "sand", "snow"]
    rho: float = 0.985
    n_train: int = 8000
    n_val: int = 640
    n_test: int = 1280
    object_scale: float = 0.6
    contrast: float = 1.0
    color_jitter: float = 0.12
    plate_margin: int = 8
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> SpuriousWorldConfig:
        from unspur.data.spuriousworld import BACKGROUNDS, CLASS_PARTS

        unknown = [c for c in self.classes if c not in CLASS_PARTS]
        if unknown:
            raise ValueError(f"unknown classes {unknown}; known classes are {sorted(CLASS_PARTS)}")
        unknown = [b for b in self.backgrounds if b not in BACKGROUNDS]
        if unknown:
            raise ValueError(f"unknown backgrounds {unknown}; known backgrounds are {sorted(BACKGROUNDS)}")
        for name, items in (("classes", self.classes), ("backgrounds", self.backgrounds)):
            if len(set(items)) != len(items) or not items:
                raise ValueError(f"{name} must be a non-empty list without repeats, got {items}")
        if len(self.backgrounds) < len(self.classes):
            raise ValueError(
                f"need at least one background per class: {len(self.classes)} classes but only "
                f"{len(self.backgrounds)} backgrounds; add backgrounds or drop classes"
            )
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"rho must lie in [0, 1], got {self.rho}")
        if not 0.0 < self.contrast <= 1.0:
            raise ValueError(f"contrast must lie in (0, 1], got {self.contrast}")
        if self.plate_margin < 0:
            raise ValueError(f"plate_margin must be >= 0 pixels, got {self.plate_margin}")
        if self.color_jitter < 0:
            raise ValueError(f"color_jitter must be >= 0, got {self.color_jitter}")
        if not 0.0 < self.object_scale <= 1.0:
            raise ValueError(f"object_scale must lie in (0, 1], got {self.object_scale}")
        for name in ("image_size", "n_train", "n_val", "n_test"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {self.image_size}")
        return self


# --- training loop (unspur.training) ---


class TrainConfig(StrictModel):
    """Optimisation of one fine-tuning run (AdamW; per-step learning-rate schedule).

    ``schedule``: ``step`` multiplies the lr by ``lr_decay`` every ``lr_decay_every`` epochs
    (paper: x0.85 every 2 epochs), ``cosine`` anneals to 0 over ``epochs``, ``constant`` keeps it;
    all start with a linear warm-up over ``warmup_epochs``. ``freeze_norm`` keeps BatchNorm layers
    in eval mode (use it when few-shot batches are tiny). ``grad_clip`` 0 turns clipping off.
    ``num_threads`` 0: ``run.cpus_per_worker`` on Ray Train, else the torch thread count of the
    process that runs it; resolved into the config (README: Reproducibility). ``augment`` flips images.
    ``params`` picks what is trained: ``all``; ``attention`` (the blocks' attention layers only);
    ``qk`` (only the query and key projections: the model can change WHERE it looks but not what
    it sees there - the relevance-gaming-proof choice for small models trained from scratch).
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    schedule: Literal["step", "cosine", "constant"] = "step"
    lr_decay: float = 0.85
    lr_decay_every: int = 2
    grad_clip: float = 1.0
    freeze_norm: bool = False
    params: Literal["all", "attention", "qk"] = "all"
    augment: bool = False
    seed: int = 0
    num_threads: int = 0

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        for name in ("epochs", "batch_size", "lr_decay_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must lie in (0, 1], got {self.lr_decay}")
        for name in ("weight_decay", "warmup_epochs", "grad_clip", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        return self


class FewShotConfig(StrictModel):
    """Few-shot protocol: ``per_class`` images of each of ``class_fraction`` of the classes."""

    enabled: bool = False
    per_class: int = 3
    class_fraction: float = 0.5
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> FewShotConfig:
        if self.per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {self.per_class}")
        if not 0 < self.class_fraction <= 1:
            raise ValueError(f"class_fraction must lie in (0, 1], got {self.class_fraction}")
        return self


# --- finetune ---


class ModelConfig(StrictModel):
    """A classifier: a registered tiny config (``unspur.models.MODELS``) or any timm model name.

    ``pretrained`` loads timm's weights (needs the hub; a cluster concern). ``checkpoint`` is an
    unspur checkpoint folder (``model.safetensors`` + ``config.yaml``) whose weights are loaded
    after building. ``kwargs`` go to the factory (e.g. ``{depth: 2}`` or timm's ``drop_rate``).
    """

    name: str = "vit_tiny_synth"
    pretrained: bool = False
    num_classes: int = 4
    img_size: int = 64
    checkpoint: str | None = None
    kwargs: dict[str, Any] = {}

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.img_size < 8:
            raise ValueError(f"img_size must be >= 8 pixels, got {self.img_size}")
        return self


class LossConfig(StrictModel):
    """Training objective (METHODS.md 1.4). ``erm``: CE on labels. ``cft``: lambda_align *
    (lambda_concept * L_concept + lambda_non * L_non_concept) + lambda_cls * CE(logits / T,
    argmax) + lambda_kl * KL(base || model). ``robustvit``: lambda_align * (lambda_bg * L_bg +
    lambda_fg * L_fg) + lambda_cls * L_cls + lambda_kl * KL. ``normalize``: ``region`` averages
    the concept / non-concept terms over |S| / |Sbar| (paper), ``image`` over all H*W pixels
    (released code). ``mask_grid`` N > 0: an N x N cell of the mask counts as concept wherever any
    of its pixels does (set it to the model's patch size: a patch's relevance is one value, so a
    thin part would otherwise be penalised as background on most of its patch).
    """

    name: Literal["erm", "cft", "robustvit"] = "cft"
    lambda_concept: float = 0.5
    lambda_non: float = 1.2
    lambda_align: float = 0.8
    lambda_cls: float = 0.2
    lambda_bg: float = 2.0
    lambda_fg: float = 0.3
    lambda_kl: float = 0.0
    temperature: float = 1.0
    normalize: Literal["region", "image"] = "region"
    mask_grid: int = 0

    @model_validator(mode="after")
    def _check(self) -> LossConfig:
        if self.mask_grid < 0:
            raise ValueError(f"mask_grid must be >= 0 (0 = pixel masks), got {self.mask_grid}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in (
            "lambda_concept",
            "lambda_non",
            "lambda_align",
            "lambda_cls",
            "lambda_bg",
            "lambda_fg",
            "lambda_kl",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        return self


class FinetuneDataConfig(StrictModel):
    """Training data of ``unspur finetune``.

    ``images``: Parquet image table(s) (files or folders of shards; ARCHITECTURE.md contract) with
    a ``split`` column; ``masks``: the masks table (``image_id, concept, rle, status``) or a
    SpuriousWorld parts table (``image_id, part, rle``); an image's mask is the union of its rows.
    Without ``images``, ``spuriousworld`` is rendered into ``<out>/data`` (cached by config).
    ``eval_max_images`` caps the evaluation split (None = all of it).
    """

    images: list[str] | None = None
    masks: str | None = None
    spuriousworld: SpuriousWorldConfig | None = None
    train_split: str = "train"
    eval_split: str = "test"
    eval_max_images: int | None = None
    loader_workers: int = 0

    @model_validator(mode="after")
    def _check(self) -> FinetuneDataConfig:
        if (self.images is None) == (self.spuriousworld is None):
            raise ValueError(
                "give exactly one of data.images (Parquet image tables) and "
                "data.spuriousworld (a SpuriousWorld config to render)"
            )
        if self.eval_max_images is not None and self.eval_max_images < 1:
            raise ValueError(f"eval_max_images must be >= 1 or null, got {self.eval_max_images}")
        return self


class FinetuneRunConfig(StrictModel):
    """Execution of ``unspur finetune``: Ray Train workers, checkpoints, tracking.

    ``num_workers`` 0 trains in this process (no Ray Train); N > 0 runs a TorchTrainer with N
    DDP workers (``use_gpu`` puts one GPU on each). Checkpoints go to ``storage_path/name``
    (default ``<out>/checkpoints``) every epoch; rerunning with the same name and storage path
    resumes from the latest one. ``max_failures`` worker-group restarts are allowed per run.
    MLflow (experiment ``experiment``) is written by rank 0 when ``track`` is on.
    ``select`` picks the weights saved as ``<out>/model``: the last epoch's, or those of the
    evaluated epoch (every ``eval_every``) with the best worst-group (``best_wga``) or average
    (``best_acc``) accuracy on ``data.eval_split``, which must then be a validation split. The
    starting weights are never a candidate; ties go to the other accuracy, then the earlier epoch.
    """

    name: str = "finetune"
    storage_path: str | None = None
    num_workers: int = 0
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 1
    keep_checkpoints: int = 2
    eval_every: int = 1
    select: Literal["last", "best_wga", "best_acc"] = "last"
    figure_images: int = 6
    experiment: str = "finetune"
    track: bool = True

    @model_validator(mode="after")
    def _check(self) -> FinetuneRunConfig:
        if not self.name or "/" in self.name:
            raise ValueError(f"run.name must be a non-empty folder name without '/', got {self.name!r}")
        if self.num_workers < 0 or self.max_failures < 0 or self.keep_checkpoints < 1:
            raise ValueError(
                "num_workers and max_failures must be >= 0 and keep_checkpoints >= 1, got "
                f"{self.num_workers}, {self.max_failures}, {self.keep_checkpoints}"
            )
        if self.eval_every < 1 or self.figure_images < 0 or self.cpus_per_worker <= 0:
            raise ValueError("eval_every must be >= 1, figure_images >= 0 and cpus_per_worker > 0")
        return self


class FinetuneConfig(StrictModel):
    """``unspur finetune``: train a classifier with ``loss`` (erm, cft, robustvit) on Ray Train.

    ``init_from``: an unspur checkpoint folder to start from (the base model; also the frozen
    reference of the KL guard ``loss.lambda_kl``). ``relevance``: a key of
    ``unspur.relevance.RELEVANCE``. ``fewshot.enabled`` trains on ``per_class`` images of a
    ``class_fraction`` of the classes; evaluation always covers every class.
    """

    out: str = "runs/finetune"
    data: FinetuneDataConfig = Field(
        default_factory=lambda: FinetuneDataConfig(spuriousworld=SpuriousWorldConfig())
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    relevance: str = "rollout"
    train: TrainConfig = Field(default_factory=TrainConfig)
    fewshot: FewShotConfig = Field(default_factory=FewShotConfig)
    init_from: str | None = None
    run: FinetuneRunConfig = Field(default_factory=FinetuneRunConfig)

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.loss.name != "erm" and self.data.masks is None and self.data.spuriousworld is None:
            raise ValueError(
                f"loss {self.loss.name!r} aligns relevance with masks: set data.masks to a "
                "masks or parts table, or use loss.name=erm"
            )
        if self.loss.lambda_kl > 0 and not self.init_from:
            raise ValueError(
                "loss.lambda_kl > 0 keeps the model close to its base model: set init_from "
                "to the base checkpoint, or loss.lambda_kl=0"
            )
        if self.run.select != "last" and self.data.eval_split in ("test", self.data.train_split):
            raise ValueError(
                f"run.select is {self.run.select!r} but data.eval_split is {self.data.eval_split!r}: "
                "choosing an epoch on the test or training split biases what it reports; set "
                "data.eval_split: val (or run.select: last)"
            )
        sw = self.data.spuriousworld
        if sw is not None and len(sw.classes) != self.model.num_classes:
            raise ValueError(
                f"data.spuriousworld has {len(sw.classes)} classes but model.num_classes is "
                f"{self.model.num_classes}; make them equal"
            )
        return self


# --- digits grid ---


class DigitsGridConfig(StrictModel):
    """digits-grid (RaVL's synthetic setting): a digit in one quadrant of a 2x2 grid and a red
    rectangle (the spurious marker) in another quadrant.

    Train split: the marker's presence is correlated with ``target_digit`` at Cramer's V =
    ``cramers_v``; the per-class marker rates are derived from V exactly (see
    :func:`unspur.data.digits_grid.marker_rates`). ``marker_rate`` is the overall train marker
    frequency (None = the target class's share, so V=1 means "marker iff target"). Val and test
    splits carry the marker with probability ``eval_marker_rate`` independently of the class
    (no correlation). ``marker_scale`` bounds the rectangle's sides as a fraction of a quadrant.
    """

    image_size: int = 64
    digits: list[int] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    target_digit: int = 0
    cramers_v: float = 0.9
    marker_rate: float | None = None
    eval_marker_rate: float = 0.5
    marker_scale: float = 0.6
    n_train: int = 2000
    n_val: int = 500
    n_test: int = 1000
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> DigitsGridConfig:
        if len(set(self.digits)) != len(self.digits) or len(self.digits) < 2:
            raise ValueError(f"digits must hold >= 2 distinct digits, got {self.digits}")
        if any(not 0 <= d <= 9 for d in self.digits):
            raise ValueError(f"digits must lie in 0..9, got {self.digits}")
        if self.target_digit not in self.digits:
            raise ValueError(f"target_digit {self.target_digit} is not one of digits {self.digits}")
        if not 0.0 <= self.cramers_v <= 1.0:
            raise ValueError(f"cramers_v must lie in [0, 1], got {self.cramers_v}")
        for name in ("marker_rate", "eval_marker_rate"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {value}")
        if not 0.1 <= self.marker_scale <= 1.0:
            raise ValueError(f"marker_scale must lie in [0.1, 1], got {self.marker_scale}")
        if self.image_size < 16 or self.image_size % 2:
            raise ValueError(f"image_size must be even and >= 16 pixels, got {self.image_size}")
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        from unspur.data.digits_grid import marker_rates

        marker_rates(self)  # raises when (cramers_v, marker_rate) is not reachable
        return self


# --- synth ---


class SynthConfig(StrictModel):
    """``unspur data synth``: render a synthetic benchmark in parallel into Parquet under ``out``.

    ``kind`` picks the generator; only its section is used. ``rows_per_block`` is the number of
    images one Ray Data task renders at a time.
    """

    out: str = "runs/synth"
    kind: Literal["spuriousworld", "digits_grid"] = "spuriousworld"
    spuriousworld: SpuriousWorldConfig = Field(default_factory=SpuriousWorldConfig)
    digits_grid: DigitsGridConfig = Field(default_factory=DigitsGridConfig)
    rows_per_block: int = 250

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        if self.rows_per_block < 1:
            raise ValueError(f"rows_per_block must be >= 1, got {self.rows_per_block}")
        return self


# --- evaluate ---


class EvaluateConfig(StrictModel):
    """``unspur evaluate``: accuracy, per-group / worst-group accuracy and relevance alignment.

    ``checkpoint`` is an unspur checkpoint folder; ``images`` the dataset read by the adapter
    ``adapter`` (``unspur.data.adapters.ADAPTERS``: a Parquet image table, an image folder, a
    Waterbirds root); ``masks`` an optional masks / parts table (``image_id``, ``concept`` or
    ``part``, ``rle``) for relevance alignment; ``split`` None = every row. ``relevance`` None
    skips relevance alignment. Inference runs on ``num_actors`` Ray Data actors of ``num_cpus`` /
    ``num_gpus`` each (fractional CPUs keep reads alive on small machines).
    """

    out: str = "runs/evaluate"
    checkpoint: str
    images: str
    adapter: str = "parquet"
    masks: str | None = None
    split: str | None = "test"
    classes: list[str] | None = None
    batch_size: int = 64
    relevance: str | None = "rollout"
    num_actors: int = 1
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    experiment: str = "evaluate"
    track: bool = True

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        if self.batch_size < 1 or self.num_actors < 1:
            raise ValueError(
                f"batch_size and num_actors must be >= 1, got {self.batch_size}, {self.num_actors}"
            )
        if self.num_cpus < 0 or self.num_gpus < 0 or self.num_cpus + self.num_gpus == 0:
            raise ValueError(f"an actor needs num_cpus or num_gpus > 0, got {self.num_cpus}, {self.num_gpus}")
        return self


# --- concepts ---

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


# --- masks ---


class GroundedSamConfig(StrictModel):
    """``segmenter.name: grounded_sam``: GroundingDINO boxes (transformers) -> SAM box-prompted masks.

    ``detector``: a Hugging Face id or local folder of a zero-shot object detector (GroundingDINO),
    or ``tiny`` (random init, for tests). ``sam_model``: a segment-anything registry size (``vit_h``,
    ``vit_l``, ``vit_b``) loaded from ``sam_checkpoint`` (a .pth file), or ``tiny`` (random init,
    img_size 256). A query box is a detection when its best token probability over the prompt's
    concepts exceeds ``box_threshold``; it belongs to every concept with a token above
    ``text_threshold``. ``prompt_mode``: ``merged`` = one detector pass per image over "c1. c2. ...",
    ``per_concept`` = one prompt "<concept>." per concept (one batched pass). Per concept, boxes
    go through NMS at ``nms_iou``, the best ``max_boxes_per_concept`` are kept, and SAM decodes
    at most ``sam_batch_size`` boxes per call from the image's one cached embedding.
    """

    detector: str = "IDEA-Research/grounding-dino-tiny"
    sam_model: str = "vit_h"
    sam_checkpoint: str | None = None
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    prompt_mode: Literal["merged", "per_concept"] = "merged"
    nms_iou: float = 0.8
    max_boxes_per_concept: int = 4
    sam_batch_size: int = 64
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> GroundedSamConfig:
        for name in ("box_threshold", "text_threshold", "nms_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"grounded_sam.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.max_boxes_per_concept < 1 or self.sam_batch_size < 1:
            raise ValueError(
                "grounded_sam.max_boxes_per_concept and grounded_sam.sam_batch_size must be >= 1"
            )
        return self


class ClipSegConfig(StrictModel):
    """``segmenter.name: clipseg``: text-prompted CLIPSeg; a pixel is in the mask when its
    probability exceeds ``threshold``. ``model``: a Hugging Face id / local folder, or ``tiny``."""

    model: str = "CIDAS/clipseg-rd64-refined"
    threshold: float = 0.4
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> ClipSegConfig:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"clipseg.threshold must lie in [0, 1], got {self.threshold}")
        return self


class GroundTruthConfig(StrictModel):
    """``segmenter.name: ground_truth``: masks a dataset already has, matched to concept strings
    (exact name, then head noun: "long beak" -> beak). ``parts``: a Parquet parts table
    (``image_id``, ``part``, ``rle``); ``mask_dir``: a folder of ``<image_id>/<part>.png`` (non-zero =
    inside). Exactly one of the two (with ``synth``, ``parts`` defaults to the generated table)."""

    parts: str | None = None
    mask_dir: str | None = None


class SegmenterConfig(StrictModel):
    """Which segmenter (``actors.segmenters.SEGMENTERS``) and its settings; only its section is used.

    ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:1`` ...
    """

    name: Literal["grounded_sam", "clipseg", "ground_truth"] = "grounded_sam"
    device: str = "auto"
    grounded_sam: GroundedSamConfig = Field(default_factory=GroundedSamConfig)
    clipseg: ClipSegConfig = Field(default_factory=ClipSegConfig)
    ground_truth: GroundTruthConfig = Field(default_factory=GroundTruthConfig)

    @model_validator(mode="after")
    def _check(self) -> SegmenterConfig:
        gs = self.grounded_sam
        if self.name == "grounded_sam" and gs.sam_model != "tiny" and not gs.sam_checkpoint:
            raise ValueError(
                f"segmenter.grounded_sam.sam_model={gs.sam_model} needs segmenter.grounded_sam.sam_checkpoint "
                "(a segment-anything .pth file); use sam_model=tiny only for a random test model"
            )
        gt = self.ground_truth
        if self.name == "ground_truth" and gt.parts and gt.mask_dir:
            raise ValueError("segmenter.ground_truth: set parts or mask_dir, not both")
        return self


class MaskComputeConfig(StrictModel):
    """Ray Data actor pool of the mask stage: ``min_actors``..``max_actors`` segmenter actors, each
    holding ``num_gpus`` / ``num_cpus`` (fractional allowed: keep num_cpus <= 0.5 on small CPU
    machines so reads are not starved) and taking ``batch_size`` images per call (one shard each)."""

    min_actors: int = 1
    max_actors: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 0.5
    batch_size: int = 8

    @model_validator(mode="after")
    def _check(self) -> MaskComputeConfig:
        if self.min_actors < 1 or self.max_actors < self.min_actors:
            raise ValueError(f"need 1 <= min_actors <= max_actors, got {self.min_actors}, {self.max_actors}")
        if self.num_cpus < 0 or self.num_gpus < 0 or self.num_cpus + self.num_gpus == 0:
            raise ValueError(f"an actor needs num_cpus or num_gpus > 0, got {self.num_cpus}, {self.num_gpus}")
        if self.batch_size < 1:
            raise ValueError(f"compute.batch_size must be >= 1, got {self.batch_size}")
        return self


class ConceptValidationConfig(StrictModel):
    """CFT concept validation (METHODS.md 1.2): on ``images_per_class`` images per class keep a
    concept when its occurrence rate >= ``min_occurrence`` and its mean coverage (IoU with the
    object mask, or with the union of the class's concepts where the table has no object mask)
    >= ``min_coverage``. The main pass then segments only the kept concepts."""

    enabled: bool = True
    images_per_class: int = 30
    min_occurrence: float = 0.15
    min_coverage: float = 0.20

    @model_validator(mode="after")
    def _check(self) -> ConceptValidationConfig:
        if self.images_per_class < 1:
            raise ValueError(f"validation.images_per_class must be >= 1, got {self.images_per_class}")
        for name in ("min_occurrence", "min_coverage"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"validation.{name} must lie in [0, 1], got {getattr(self, name)}")
        return self


class MasksConfig(StrictModel):
    """``unspur masks``: image table + concept bank -> concept masks (Parquet shards of COCO RLE).

    Images: ``images`` (a Parquet image table, file or folder) or ``synth`` (a SpuriousWorld set of
    ``synth_splits`` generated into ``<out>/data``); ``splits`` keeps only rows of those splits
    (None = all). Concepts: ``bank`` (a concept bank JSON from ``unspur concepts``) or ``concepts``
    (inline ``{class: [concept, ...]}``, kind important); only ``kinds`` are segmented. Output:
    ``<out>/masks/*.parquet`` (the training input), ``<out>/concepts_validated.json``,
    ``<out>/summary.json``; a rerun skips image ids already written.
    """

    out: str = "runs/masks"
    images: str | None = None
    synth: SpuriousWorldConfig | None = None
    synth_splits: list[Literal["train", "val", "test"]] = ["train"]
    splits: list[str] | None = None
    bank: str | None = None
    concepts: dict[str, list[str]] | None = None
    kinds: list[Literal["important", "superclass", "around"]] = ["important"]
    segmenter: SegmenterConfig = Field(default_factory=SegmenterConfig)
    compute: MaskComputeConfig = Field(default_factory=MaskComputeConfig)
    validation: ConceptValidationConfig = Field(default_factory=ConceptValidationConfig)
    overlays: int = 16
    experiment: str = "masks"
    track: bool = True

    @model_validator(mode="after")
    def _check(self) -> MasksConfig:
        if (self.images is None) == (self.synth is None):
            raise ValueError(
                "set exactly one of images (a Parquet image table) or synth (generate SpuriousWorld)"
            )
        if (self.bank is None) == (self.concepts is None):
            raise ValueError(
                "set exactly one of bank (a concept bank JSON) or concepts (inline {class: [...]})"
            )
        if not self.kinds or len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds must be a non-empty list without repeats, got {self.kinds}")
        gt = self.segmenter.ground_truth
        if self.segmenter.name == "ground_truth" and self.synth is None and not (gt.parts or gt.mask_dir):
            raise ValueError("segmenter.name=ground_truth needs segmenter.ground_truth.parts or .mask_dir")
        if self.overlays < 0:
            raise ValueError(f"overlays must be >= 0, got {self.overlays}")
        return self


# --- pipeline ---


class PipelineDataConfig(StrictModel):
    """Data of ``unspur run``: render SpuriousWorld (default), or use an existing image table.

    ``images``: a Parquet image table (file or folder of shards) with a ``split`` column;
    ``parts``: a ground-truth parts / masks table for the ``ground_truth`` segmenter and for
    relevance alignment at evaluation (optional). Give exactly one of ``spuriousworld`` and
    ``images``.
    """

    spuriousworld: SpuriousWorldConfig | None = Field(default_factory=SpuriousWorldConfig)
    images: str | None = None
    parts: str | None = None

    @model_validator(mode="after")
    def _check(self) -> PipelineDataConfig:
        if (self.images is None) == (self.spuriousworld is None):
            raise ValueError(
                "give exactly one of data.spuriousworld (render it) and data.images (an existing "
                "image table); set the other to null"
            )
        return self


class PipelineEvaluateConfig(StrictModel):
    """Final evaluation of every trained model on ``split`` (never the split used for choices)."""

    split: str = "test"
    batch_size: int = 64
    relevance: str | None = "rollout"
    num_actors: int = 1
    num_cpus: float = 0.5
    num_gpus: float = 0.0


class PipelineConfig(StrictModel):
    """``unspur run`` / ``unspur demo``: concepts -> masks (+ validation) -> base -> CFT (+ control)
    -> evaluate, each stage in ``<out>/<stage>`` and reused when its output exists with the same
    config.

    The stage sections hold keys of the stage jobs' own configs (``ConceptsConfig``,
    ``MasksConfig``, ``FinetuneConfig``) on top of what the pipeline wires itself: each stage's
    ``out``, the image table, the concept bank, the masks and the base checkpoint. They are
    validated against those models before anything runs. ``control`` (ERM on the very same few
    images and epochs as ``cft``) runs unless ``run_control`` is false. ``sweep`` (optional, keys of
    ``SweepConfig``: ``space``, ``num_samples``, ...): a Ray Tune sweep over the ``cft`` stage's
    config, ranked on the validation split; its best model is evaluated beside the others.
    """

    out: str = "runs/pipeline"
    data: PipelineDataConfig = Field(default_factory=PipelineDataConfig)
    concepts: dict[str, Any] = {}
    masks: dict[str, Any] = {}
    base: dict[str, Any] = {}
    cft: dict[str, Any] = {}
    run_control: bool = True
    sweep: dict[str, Any] | None = None
    evaluate: PipelineEvaluateConfig = Field(default_factory=PipelineEvaluateConfig)
    experiment: str = "pipeline"
    reuse: bool = True


# --- sweep ---


def _sweep_finetune() -> FinetuneConfig:
    return FinetuneConfig(
        data=FinetuneDataConfig(spuriousworld=SpuriousWorldConfig(), eval_split="val"),
        run=FinetuneRunConfig(figure_images=0),
    )


class SweepConfig(StrictModel):
    """``unspur sweep``: Ray Tune over ``unspur finetune`` (one trial = one fine-tuning run).

    ``finetune``: the training config of every trial; a trial applies one point of ``space`` (a YAML
    search space, or a bare name like ``cft`` for ``tune_spaces/cft.yaml``) to it and trains into
    ``<out>/trials/<trial id>`` (the sweep sets the trial's ``out``, ``run.name``, ``run.storage_path``
    and turns ``run.track`` off: each trial is an MLflow child run of the sweep's parent run). Trials
    are ranked on ``finetune.data.eval_split``, which must be a validation split, never test.
    ``base``: optional; a model trained once into ``<out>/base`` before the trials (reused when it is
    there with the same config) and used as every trial's ``init_from``. ``num_samples``: trials of a
    random / optuna search (a grid search runs each grid point once).
    ``max_concurrent_trials``: None = as many as the cluster's resources fit (more is refused).
    Tune keeps its state in ``storage_path/name`` (default ``<out>/tune``): rerunning the same command
    resumes an interrupted sweep and re-runs no finished trial. ``trial_max_failures``: retries of a
    failing trial (a trial that still fails is recorded as failed and the sweep goes on).
    """

    out: str = "runs/sweep"
    space: str = "cft"
    finetune: FinetuneConfig = Field(default_factory=_sweep_finetune)
    base: FinetuneConfig | None = None
    num_samples: int = 8
    max_concurrent_trials: int | None = None
    name: str = "sweep"
    storage_path: str | None = None
    seed: int = 0
    trial_max_failures: int = 0
    experiment: str = "sweep"
    plot: bool = True

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        ft = self.finetune
        if ft.data.eval_split == "test" or ft.data.eval_split == ft.data.train_split:
            raise ValueError(
                f"finetune.data.eval_split is {ft.data.eval_split!r}: a sweep ranks its trials on a "
                "validation split, never on test or training data; set finetune.data.eval_split: val"
            )
        if ft.run.eval_every != 1:
            raise ValueError(
                f"finetune.run.eval_every is {ft.run.eval_every}: trials are scheduled on the "
                "validation metric of every epoch; set finetune.run.eval_every: 1"
            )
        if self.base is not None and ft.init_from:
            raise ValueError(
                "set either base (trained once by the sweep) or finetune.init_from (an existing "
                "checkpoint), not both"
            )
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a non-empty folder name without '/', got {self.name!r}")
        if self.num_samples < 1 or self.trial_max_failures < 0:
            raise ValueError(
                f"num_samples must be >= 1 and trial_max_failures >= 0, got {self.num_samples}, "
                f"{self.trial_max_failures}"
            )
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ValueError(f"max_concurrent_trials must be >= 1 or null, got {self.max_concurrent_trials}")
        return self
