"""What every stage shares: a config that checks itself, a result that writes its JSON.

A config's field names are the CLI's option names with ``_`` (``overlap``, ``tile_size``), so an
error naming a parameter reads "overlap ..." from Python and "--overlap ..." from the CLI
(``wsipipe.errors``). Every value check that needs no file or model is made once, when the config
is built (``check``); what needs the slide or the model is checked by the stage, still naming the
parameter. ``batch_options`` derives the per-slide options ``wsipipe batch`` accepts from the
fields, so a stage's options are never listed twice.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from wsipipe.errors import InvalidInputError

#: ``progress(done, total)``: called as a stage advances, in its units (tiles); ``done`` counts the
#: work an interrupted earlier run already did.
Progress = Callable[[int, int], None]
#: ``say(message)``: a one-line note for the user (e.g. which device runs the stage).
Say = Callable[[str], None]

#: Field metadata: not a per-slide batch option (the slide, the output, how a run is shown).
NOT_BATCH = {"batch": False}
#: Field metadata: a number that must be above 0 (checked once, for every config that has one).
POSITIVE = {"positive": True}


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageConfig:
    """A stage's parameters; built only valid (``check`` runs on construction)."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if _base_type(type(self), field.name) is Path and isinstance(value, (str, os.PathLike)):
                object.__setattr__(self, field.name, Path(value))
        self.check()

    def check(self) -> None:
        """Every value check that needs no file or model; a subclass adds its own after these."""
        for field in dataclasses.fields(self):
            if field.metadata.get("positive"):
                value = getattr(self, field.name)
                if value is not None:
                    require_positive(field.name, value)

    @classmethod
    def batch_options(cls) -> dict[str, Callable[[Any], Any]]:
        """The per-slide options a batch accepts for this stage: name -> converter from manifest text
        (or an already typed value), by the field's type; fields marked ``NOT_BATCH`` are left out."""
        options = {}
        for field in dataclasses.fields(cls):
            if field.metadata.get("batch", True):
                options[field.name] = _converter(_base_type(cls, field.name), field.metadata.get("positive", False))
        return options


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageResult:
    """What a stage did; ``to_json()`` is the dict its JSON output holds (or a batch summary's row)."""

    #: Fields kept out of ``to_json()`` (e.g. the output path, when the JSON file lives in it).
    NOT_IN_JSON: ClassVar[tuple[str, ...]] = ()

    def to_json(self) -> dict[str, Any]:
        """The fields in declaration order (paths as text), as ``json.dumps`` writes them."""
        return {
            field.name: str(value) if isinstance(value, Path) else value
            for field in dataclasses.fields(self)
            if field.name not in self.NOT_IN_JSON
            for value in (getattr(self, field.name),)
        }


def require_positive(name: str, value: float) -> None:
    """The one check of a number that must be above 0."""
    if not value > 0:
        raise InvalidInputError(f"{{{name}}} must be a positive number, got {value}", parameter=name)


def parse_flag(value: Any) -> bool:
    """A switch given on a command line (a bool) or in a manifest cell (true/false, yes/no, 1/0)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise ValueError("must be true or false")


def absolute_path(value: Any) -> Path:
    """A path as the batch's workers must see it: absolute, links resolved (no error on a link loop)."""
    return Path(os.path.realpath(Path(value).expanduser()))


def _positive_float(value: Any) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("must be a positive number")
    return number


def _converter(kind: type, positive: bool) -> Callable[[Any], Any]:
    if kind is bool:
        return parse_flag
    if kind is Path:
        return absolute_path
    if kind is float and positive:
        return _positive_float
    if kind in (int, float, str):
        return kind
    raise TypeError(f"no batch converter for a {kind} field")  # a new field type needs one here


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(cls: type, name: str) -> type:
    """A field's type without ``None`` (``Path | None`` -> ``Path``)."""
    hint = _field_types(cls)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return hint
