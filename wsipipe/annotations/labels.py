"""Label maps: which annotation label burns which mask value, and in which order.

Entries are burned in the order listed, so a later entry wins where labels overlap; an entry
whose value is 0 erases what earlier entries burned, which is how exclusion regions become holes
(``"Tumor=1,Exclusion=0"``). Labels not in the map are left out of masks (with one warning).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wsipipe.errors import InvalidInputError

log = logging.getLogger("wsipipe.annotations")

#: Labels that mean "not this region" by convention: CAMELYON16's third group and plain names.
EXCLUSION_LABELS = ("_2", "exclusion", "exclude", "excluded")


@dataclass(frozen=True)
class LabelMap:
    names: tuple[str, ...]
    values: tuple[int, ...]

    def __post_init__(self):
        if len(set(self.names)) != len(self.names):
            raise InvalidInputError(
                f"{{label_map}}: a label is listed twice in {list(self.names)}", parameter="label_map"
            )

    def priority(self, label: str, ancestors: Sequence[str] = ()) -> int | None:
        """Index of the entry for ``label`` (or its nearest listed parent group), or None."""
        for name in (label, *ancestors):
            if name in self.names:
                return self.names.index(name)
        return None

    def __str__(self) -> str:
        return ",".join(f"{n}={v}" for n, v in zip(self.names, self.values))

    def to_dict(self) -> dict[str, int]:
        return dict(zip(self.names, self.values))


def is_exclusion(label: str) -> bool:
    return label.strip().lower() in EXCLUSION_LABELS


def default_label_map(labels: list[str]) -> LabelMap:
    """Each label 1, 2, ... in order of appearance; exclusion labels 0 and last (holes)."""
    kept = [label for label in labels if not is_exclusion(label)]
    excluded = [label for label in labels if is_exclusion(label)]
    return LabelMap(tuple(kept + excluded), tuple([*range(1, len(kept) + 1), *[0] * len(excluded)]))


def parse_label_map(spec) -> LabelMap:
    """A LabelMap from ``"Tumor=1,Exclusion=0"``, a dict, or a file (JSON object or name=value lines)."""
    if isinstance(spec, LabelMap):
        return spec
    if isinstance(spec, dict):
        return _from_pairs(list(spec.items()), "{label_map}")
    text, where = str(spec), "{label_map}"
    path = Path(text)
    if "=" not in text or (len(text) < 4096 and path.is_file()):
        if not path.is_file():
            raise InvalidInputError(
                f"{{label_map}} {text!r}: neither 'name=value,...' nor an existing file", parameter="label_map"
            )
        if path.stat().st_size > 1 << 20:
            raise InvalidInputError(f"{{label_map}} {path}: file is larger than 1 MB", parameter="label_map")
        where = f"{{label_map}} {path}"
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.lstrip().startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(
                    f"{where}:{exc.lineno}: malformed JSON: {exc.msg}", parameter="label_map"
                ) from None
            return _from_pairs(list(data.items()), where)
        entries = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    else:
        entries = [part.strip() for part in text.split(",")]
    pairs = []
    for entry in filter(None, entries):
        name, sep, value = entry.rpartition("=")
        if not sep or not name.strip():
            raise InvalidInputError(f"{where}: {entry!r} is not 'name=value'", parameter="label_map")
        pairs.append((name.strip(), value.strip()))
    return _from_pairs(pairs, where)


def _from_pairs(pairs: list[tuple], where: str) -> LabelMap:
    if not pairs:
        raise InvalidInputError(f"{where}: no entries", parameter="label_map")
    names, values = [], []
    for name, value in pairs:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"{where}: value {value!r} for {name!r} is not an integer", parameter="label_map"
            ) from None
        if not 0 <= number <= 255 or isinstance(value, bool):
            raise InvalidInputError(
                f"{where}: value {value!r} for {name!r} must be 0-255 (a uint8 mask)", parameter="label_map"
            )
        names.append(str(name))
        values.append(number)
    return LabelMap(tuple(names), tuple(values))
