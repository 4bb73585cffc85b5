"""Reading untrusted XML: format sniffing without a parser, then a locked-down streaming parser.

A DOCTYPE is refused before lxml sees the file (annotation formats never need one), so neither
external entities (XXE) nor entity-expansion bombs can be declared; the parser itself is also
configured with entity resolution, DTD loading and network access off, as a second guard.
"""

from __future__ import annotations

import re
from pathlib import Path

from lxml import etree

from wsipipe.errors import AnnotationError

SNIFF_LIMIT = 1 << 20  # the prolog before the root element may not be longer than this
_NAME = re.compile(r"<([A-Za-z_][\w.\-:]*)")
_SPACE = re.compile(r"[\s\ufeff]*")


def xml_root_name(path: Path, head: str) -> tuple[str, int]:
    """The root element's name and line, scanning only the prolog; refuses a DOCTYPE.

    ``head`` is the start of the file (up to ``SNIFF_LIMIT`` bytes), decoded.
    """
    pos = 0
    while True:
        pos = _SPACE.match(head, pos).end()  # type: ignore[union-attr]  # "*": it always matches
        line = head.count("\n", 0, pos) + 1
        if head.startswith(("<!DOCTYPE", "<!ENTITY"), pos):
            raise AnnotationError(
                f"{path}:{line}: the file declares a DOCTYPE; DTDs and entities are refused in "
                "annotation files (they can read local files or expand without bound)"
            )
        if head.startswith("<?", pos):
            closer = "?>"
        elif head.startswith("<!--", pos):
            closer = "-->"
        else:
            match = _NAME.match(head, pos)
            if match:
                return match.group(1), line
            raise AnnotationError(f"{path}:{line}: not well-formed XML before the root element")
        end = head.find(closer, pos)
        if end < 0:
            raise AnnotationError(
                f"{path}:{line}: no root element within the first {SNIFF_LIMIT} bytes "
                "(unterminated declaration or comment)"
            )
        pos = end + len(closer)


def iter_xml(path: Path, tags: tuple[str, ...]):
    """Yield ``(event, element)`` for the end of each element named in ``tags``, streaming.

    The caller clears elements it is done with (see ``release``) so memory stays bounded.
    """
    context = etree.iterparse(
        str(path),
        events=("end",),
        tag=tags,
        resolve_entities=False,
        load_dtd=False,
        dtd_validation=False,
        no_network=True,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
    try:
        yield from context
    except etree.XMLSyntaxError as exc:
        line = exc.lineno or getattr(exc, "position", (None,))[0]
        raise AnnotationError(f"{path}:{line}: malformed XML: {exc.msg}") from None


def release(elem) -> None:
    """Free an element that has been read, and the already-read siblings before it."""
    elem.clear(keep_tail=False)
    parent = elem.getparent()
    if parent is not None:
        while elem.getprevious() is not None:
            del parent[0]


def number(text: str | None) -> float:
    """A coordinate: float text, with a decimal comma accepted (ASAP in some locales)."""
    if text is None:
        raise ValueError("missing")
    return float(text.strip().replace(",", "."))
