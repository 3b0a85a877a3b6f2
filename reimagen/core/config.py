"""Frozen, validated attrs configs with a JSON round-trip (docs/design.md §9).

Every config class is ``@config``-decorated (frozen, kw_only, slots) and gets ``from_dict`` /
``to_dict`` / ``to_json`` / ``from_json`` from :class:`ConfigMixin`. ``from_dict`` rejects
unknown keys with a message that lists the allowed ones (no ``Cls(**blob)`` magic), and nested
configs / tuples are rebuilt from their annotated types.
"""

from __future__ import annotations

import json
import math
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, dataclass_transform

import attrs

from reimagen.core.io import atomic_write_text

C = TypeVar("C", bound="ConfigMixin")


class ConfigError(ValueError):
    """A config value or key that is not allowed; the message names it and what is allowed."""


_T = TypeVar("_T")


# dataclass_transform (PEP 681) tells type checkers what attrs.frozen(kw_only=True) makes of the
# class: keyword-only __init__ from the annotated fields, attrs.field() as a field specifier.
@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(attrs.field,))
def config(cls: type[_T]) -> type[_T]:
    """Class decorator: a frozen, keyword-only attrs class with the JSON round-trip."""
    return attrs.frozen(kw_only=True)(cls)


class ConfigMixin:
    if TYPE_CHECKING:
        # What @config's attrs.frozen adds at run time. mypy reads @config as a dataclass_transform,
        # not as attrs, so without this attrs.asdict/fields_dict reject ConfigMixin subclasses.
        __attrs_attrs__: ClassVar[tuple[attrs.Attribute[Any], ...]]

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=True, value_serializer=_serialize)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            atomic_write_text(Path(path), text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> typing.Self:
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
        fields = attrs.fields_dict(cls)
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(fields)}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {name: _build(hints.get(name), value) for name, value in data.items()}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"{cls.__name__}: {err}") from err

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> typing.Self:
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            text = Path(path_or_text).read_text()
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> typing.Self:
        # cast: mypy's attrs plugin only knows classes decorated by attrs' own decorators by name,
        # and @config (a dataclass_transform) is not one of them; attrs.frozen ran at run time.
        return attrs.evolve(typing.cast(Any, self), **changes)


def _serialize(inst, field, value):
    if isinstance(value, tuple):
        return list(value)
    return value


def _build(tp, value):
    """Rebuild a JSON value into the annotated type (nested configs, tuples)."""
    if tp is None:
        return value
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return value if value is None else _build(args[0], value)
    if isinstance(tp, type) and issubclass(tp, ConfigMixin) and isinstance(value, dict):
        return tp.from_dict(value)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(tp)
        inner = args[0] if args else None
        return tuple(_build(inner, v) for v in value)
    return value


# ---- validators with one-line messages naming the argument and the allowed values ----------


def in_range(lo: float | None = None, hi: float | None = None, *, lo_open=False, hi_open=False):
    def check(inst, attribute, value):
        bad = (
            math.isnan(value)  # NaN passes every comparison below
            or math.isinf(value)  # an open end means any finite value: inf weights give NaN
            or (lo is not None and (value <= lo if lo_open else value < lo))
            or (hi is not None and (value >= hi if hi_open else value > hi))
        )
        if bad:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
            finite = " a finite number" if math.isinf(value) else ""
            raise ConfigError(
                f"{type(inst).__name__}.{attribute.name} must be{finite} in {span}, got {value!r}"
            )

    return check


def one_of(*allowed):
    def check(inst, attribute, value):
        if value not in allowed:
            raise ConfigError(
                f"{type(inst).__name__}.{attribute.name} must be one of "
                f"{', '.join(map(repr, allowed))}; got {value!r}"
            )

    return check
