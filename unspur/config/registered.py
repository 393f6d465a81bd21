"""Config fields whose value names a registry entry (losses, segmenters, backends, data kinds ...).

Two shapes, both resolved against the registry when the config is validated (so entries
registered after this module was imported, even inside a test, are accepted):

- :func:`registered`: the section IS the entry's config, picked by a key inside it
  (``loss: {name: cft, lambda_align: 0.8}`` validates against the ``cft`` loss's config class);
- :class:`SectionedModel`: a selector field names the entry and the entry's settings sit under a
  key of its name (``segmenter: {name: clipseg, clipseg: {threshold: 0.5}}``); every registered
  entry's section is present (defaults) so a dump round-trips.

An unknown name is an error listing what is registered.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, SerializeAsAny, ValidationError, model_validator
from pydantic_core import InitErrorDetails

from unspur.config.base import StrictModel
from unspur.registry import Registry, UnknownNameError

__all__ = ["SectionedModel", "registered", "registered_default"]


def registered(registry: Registry, key: str = "name", default: str | None = None) -> Any:
    """Annotated type of a section validated by ``registry.entry(section[key]).config``.

    ``default``: the entry used when the section omits ``key``. Accepts a mapping or a config
    instance; the result is an instance of the entry's config class (dumped as that class).
    """

    def pick(value: Any) -> Any:
        if isinstance(value, BaseModel):
            entry = registry.entry(getattr(value, key, None))
            if entry.config is not None and isinstance(value, entry.config):
                return value
            value = value.model_dump()
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ValueError(
                f"expected a mapping with {key}: <{registry.kind}> (registered: "
                f"{', '.join(registry.names())}), got {value!r}"
            )
        data = dict(value)
        if default is not None:
            data.setdefault(key, default)
        if key not in data:
            raise ValueError(f"missing {key}; registered {registry.kind}s: {', '.join(registry.names())}")
        entry = registry.entry(data[key])
        if entry.config is None:
            raise ValueError(f"{registry.kind} {data[key]!r} registered no config class")
        return entry.config.model_validate(data)

    return Annotated[SerializeAsAny[StrictModel], BeforeValidator(pick)]


def registered_default(registry: Registry, name: str) -> Any:
    """``default_factory`` building entry ``name``'s default config (looked up when needed)."""

    def make() -> Any:
        return registry.entry(name).config()

    return make


class SectionedModel(StrictModel):
    """A config whose :attr:`selector` field names an entry of :attr:`registry`; keys named after
    registered entries hold their settings (validated by the entry's config class). Other keys are
    rejected. An entry may register ``check`` (meta): ``check(cfg)`` raises ValueError for a
    cross-field problem of this config when that entry is selected."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, protected_namespaces=())
    registry: ClassVar[Registry]
    selector: ClassVar[str] = "name"

    @classmethod
    def allowed_keys(cls) -> list[str]:
        """Fields plus the section of every registered entry that has a config."""
        sections = [n for n in cls.registry.names() if cls.registry.entry(n).config is not None]
        return [*cls.model_fields, *(s for s in sections if s not in cls.model_fields)]

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        errors: list[InitErrorDetails] = []
        selected = data.get(cls.selector, cls.model_fields[cls.selector].default)
        try:
            cls.registry.entry(selected)
        except UnknownNameError as err:
            errors.append(
                InitErrorDetails(type="value_error", loc=(cls.selector,), input=selected, ctx={"error": err})
            )
        for key in [k for k in data if k not in cls.model_fields]:
            entry = cls.registry.entry(key) if key in cls.registry else None
            if entry is None or entry.config is None:
                errors.append(InitErrorDetails(type="extra_forbidden", loc=(key,), input=data[key]))
                continue
            try:
                data[key] = entry.config.model_validate(data[key] if data[key] is not None else {})
            except ValidationError as err:
                for e in err.errors(include_url=False):
                    detail = InitErrorDetails(type=e["type"], loc=(key, *e["loc"]), input=e["input"])
                    if "ctx" in e:
                        detail["ctx"] = e["ctx"]
                    errors.append(detail)
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        for name in cls.registry.names():
            config = cls.registry.entry(name).config
            if config is not None and name not in data and name not in cls.model_fields:
                data[name] = config()
        return data

    @model_validator(mode="after")
    def _check_selected(self) -> SectionedModel:
        check = self.registry.entry(getattr(self, self.selector)).meta.get("check")
        if check is not None:
            check(self)
        return self

    @property
    def section(self) -> Any:
        """The selected entry's settings (None when it registered no config class)."""
        return (self.model_extra or {}).get(getattr(self, self.selector))
