"""Untrusted input: XXE and entity bombs, and every kind of bad annotation or file."""

from __future__ import annotations

import json
import logging
import math
import time

import pytest
import shapely

from wsipipe.annotations import read_annotations
from wsipipe.annotations.xmlsafe import iter_xml
from wsipipe.errors import AnnotationError

SECRET = "wsipipe-secret-7f3a9c"


def _asap(*annotations: str) -> str:
    return (
        '<?xml version="1.0"?>\n<ASAP_Annotations>\n<Annotations>\n'
        + "\n".join(annotations)
        + "\n</Annotations>\n</ASAP_Annotations>\n"
    )


def _polygon(name: str, points, group: str = "Tumor") -> str:
    coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate(points))
    return (
        f'<Annotation Name="{name}" Type="Polygon" PartOfGroup="{group}" Color="#FF0000">'
        f"<Coordinates>{coords}</Coordinates></Annotation>"
    )


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text(SECRET)
    return path


def _xxe(secret_file) -> str:
    return (
        f'<?xml version="1.0"?>\n<!DOCTYPE ASAP_Annotations [<!ENTITY xxe SYSTEM "file://{secret_file}">]>\n'
        '<ASAP_Annotations><Annotations><Annotation Name="x" Type="Polygon" PartOfGroup="Tumor">'
        '<Coordinates>&xxe;<Coordinate Order="0" X="0" Y="0"/><Coordinate Order="1" X="5" Y="0"/>'
        '<Coordinate Order="2" X="5" Y="5"/></Coordinates></Annotation></Annotations></ASAP_Annotations>\n'
    )


BOMB = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
    + "\n".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
    + '\n]>\n<Annotations MicronsPerPixel="0.25"><Annotation Name="&lol9;"/></Annotations>\n'
)


def test_external_entity_is_refused_without_reading_the_file(tmp_path, secret_file):
    path = tmp_path / "xxe.xml"
    path.write_text(_xxe(secret_file))
    start = time.perf_counter()
    with pytest.raises(AnnotationError) as error:
        read_annotations(path)
    assert time.perf_counter() - start < 1
    assert "DOCTYPE" in str(error.value) and f"{path}:2" in str(error.value)
    assert SECRET not in str(error.value)


def test_parser_itself_never_expands_an_external_entity(tmp_path, secret_file):
    """Second guard: even past the DOCTYPE check, lxml is configured not to resolve entities."""
    path = tmp_path / "xxe.xml"
    path.write_text(_xxe(secret_file))
    seen = []
    for _, elem in iter_xml(path, ("Coordinates", "Coordinate", "Annotation")):
        seen.append(elem.text or "")
        seen.extend(elem.attrib.values())
        seen.extend(str(child) for child in elem)
    assert seen and not any(SECRET in text for text in seen)


def test_entity_bomb_is_refused_quickly(tmp_path):
    path = tmp_path / "bomb.xml"
    path.write_text(BOMB)
    start = time.perf_counter()
    with pytest.raises(AnnotationError, match="DOCTYPE"):
        read_annotations(path)
    assert time.perf_counter() - start < 1


def test_parser_does_not_expand_an_entity_bomb(tmp_path):
    """Second guard: past the DOCTYPE check, lxml refuses the amplification (or leaves it unexpanded)."""
    path = tmp_path / "bomb.xml"
    path.write_text(BOMB)
    start = time.perf_counter()
    try:
        names = [elem.get("Name") or "" for _, elem in iter_xml(path, ("Annotation",))]
    except AnnotationError as error:
        assert "bomb.xml:14: malformed XML" in str(error) and "entity" in str(error).lower()
    else:
        assert all(len(name) < 100 for name in names)
    assert time.perf_counter() - start < 1


def test_doctype_after_a_comment_is_still_refused(tmp_path):
    path = tmp_path / "late.xml"
    path.write_text('<?xml version="1.0"?>\n<!-- a comment -->\n<!DOCTYPE Annotations>\n<Annotations/>\n')
    with pytest.raises(AnnotationError, match=r"late.xml:3: .*DOCTYPE"):
        read_annotations(path)


BAD_SHAPES = [
    ("two points", [(0, 0), (5, 5)], "2 distinct points"),
    ("repeated points", [(0, 0), (5, 5), (0, 0), (5, 5)], "2 distinct points"),
    ("nan", [(0, 0), (5, "NaN"), (5, 5)], "NaN or infinite"),
    ("inf", [(0, 0), (5, "inf"), (5, 5)], "NaN or infinite"),
    ("text", [(0, 0), (5, "abc"), (5, 5)], "not a number"),
]


@pytest.mark.parametrize("name,points,message", BAD_SHAPES, ids=[b[0] for b in BAD_SHAPES])
def test_bad_polygon_is_skipped_with_a_warning_naming_file_and_line(tmp_path, caplog, name, points, message):
    path = tmp_path / "bad.xml"
    path.write_text(_asap(_polygon("good", [(0, 0), (4, 0), (4, 4)]), _polygon(name, points)))
    with caplog.at_level(logging.WARNING, logger="wsipipe.annotations"):
        annotations = read_annotations(path)
    assert [a.name for a in annotations] == ["good"]
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert f"{path}:5" in warning and message in warning and "skipped" in warning and repr(name) in warning
    with pytest.raises(AnnotationError, match=rf"{path}:5: .*{message}"):
        read_annotations(path, strict=True)


def test_self_intersection_is_repaired_and_reported(tmp_path, caplog):
    bowtie = [(0, 0), (10, 10), (10, 0), (0, 10)]
    path = tmp_path / "bowtie.xml"
    path.write_text(_asap(_polygon("bowtie", bowtie)))
    with caplog.at_level(logging.WARNING, logger="wsipipe.annotations"):
        (annotation,) = read_annotations(path)
    assert annotation.geometry.is_valid and annotation.geometry.area == pytest.approx(50)
    assert "Self-intersection" in caplog.text and "make_valid" in caplog.text and f"{path}:4" in caplog.text
    with pytest.raises(AnnotationError, match="Self-intersection") as refused:
        read_annotations(path, strict=True)
    assert str(refused.value).endswith("(refused by strict)") and "repaired" not in str(refused.value)


def test_geojson_bad_features_are_skipped_with_their_index(tmp_path, caplog):
    features = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}},
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, "x"], [1, 1]]]}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0]]]}},
        {"type": "NotAFeature"},
        {
            "type": "Feature",
            "geometry": {
                "type": "MultiPolygon",
                "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 0]]], [[[5, 5], [6, 6], [5, 5]]]],
            },
        },
    ]
    path = tmp_path / "bad.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    with caplog.at_level(logging.WARNING, logger="wsipipe.annotations"):
        annotations = read_annotations(path)
    assert len(annotations) == 2 and annotations[1].geometry.area == 0.5  # the good part of #5 is kept
    for index, message in [
        (1, "LineString"),
        (2, "malformed coordinates"),
        (3, "distinct points"),
        (4, "not a GeoJSON Feature"),
        (5, "part 1 has 2 distinct points"),
    ]:
        assert any(f"feature #{index}" in r.getMessage() and message in r.getMessage() for r in caplog.records)


def test_outside_the_slide_is_clipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "edge.xml"
    path.write_text(
        _asap(
            _polygon("edge", [(-10, 0), (10, 0), (10, 10), (-10, 10)]),
            _polygon("gone", [(200, 200), (210, 200), (210, 210)]),
        )
    )
    annotations = read_annotations(path)
    with caplog.at_level(logging.WARNING, logger="wsipipe.annotations"):
        annotations.clip_to(100, 100)
    assert len(annotations) == 1 and annotations[0].geometry.area == 100
    assert annotations[0].geometry.bounds == (0, 0, 10, 10)
    assert "'edge'" in caplog.text and "clipped" in caplog.text and "'gone'" in caplog.text
    with pytest.raises(AnnotationError, match="outside the slide"):
        read_annotations(path).clip_to(100, 100, strict=True)


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "the file is empty"),
        ("  \n\t\n", "the file is empty"),
        ('<?xml version="1.0"?>\n<svg><g/></svg>', r":2: root element <svg> is neither ASAP"),
        ("<ASAP_Annotations><Annotations><Annotation Name='a'>\n</Annotations>", r":2: malformed XML"),
        ('{"type": "Polygon", "coordinates": []}', "expected a FeatureCollection, a Feature or a list"),
        ('{"type": "FeatureCollection", "features": [', r":1: malformed JSON"),
        ("Name,X,Y\na,1,2\n", "neither XML .* nor GeoJSON"),
        ("\x89PNG\r\n\x1a\n\x00\x00", "neither XML .* nor GeoJSON"),
    ],
    ids=["empty", "blank", "wrong-root", "truncated-xml", "bare-geometry", "truncated-json", "csv", "binary"],
)
def test_unreadable_files_give_one_clear_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "input.xml"
    path.write_text(content, encoding="latin-1")
    with pytest.raises(AnnotationError, match=message) as error:
        read_annotations(path)
    assert str(error.value).startswith(str(path))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(AnnotationError, match="no such file"):
        read_annotations(tmp_path / "nope.xml")
    with pytest.raises(AnnotationError, match="not a file"):
        read_annotations(tmp_path)


def test_many_repairs_are_summarised_not_flooded(tmp_path, caplog):
    bowties = [_polygon(f"b{i}", [(0, 0), (10, 10), (10, 0), (0, 10)]) for i in range(25)]
    path = tmp_path / "many.xml"
    path.write_text(_asap(*bowties))
    with caplog.at_level(logging.WARNING, logger="wsipipe.annotations"):
        annotations = read_annotations(path)
    assert len(annotations) == 25 and all(math.isclose(a.geometry.area, 50) for a in annotations)
    assert len(caplog.records) == 11 and "15 more annotations repaired (25 in all)" in caplog.records[-1].getMessage()
    assert shapely.is_valid(shapely.GeometryCollection([a.geometry for a in annotations]))


def test_asap_content_under_an_aperio_root_is_not_silently_empty(tmp_path, caplog):
    path = tmp_path / "mixed.xml"
    path.write_text(_asap(_polygon("a", [(0, 0), (4, 0), (4, 4)])).replace("ASAP_Annotations", "Annotations"))
    with caplog.at_level(logging.WARNING, logger="wsipipe.annotations"):
        assert len(read_annotations(path)) == 0
    assert f"{path}: the file holds no Aperio <Region> elements" in caplog.text


def test_streaming_releases_elements_as_it_reads(tmp_path):
    """Read elements are freed as the reader goes: the tree holds the current element, at most one
    emptied predecessor and what the parser has read ahead, never the whole file (30 000 elements)."""
    from wsipipe.annotations.xmlsafe import release

    square = [(0, 0), (4, 0), (4, 4), (0, 4)]
    path = tmp_path / "many.xml"
    path.write_text(_asap(*[_polygon(f"p{i}", square) for i in range(5000)]))
    largest = 0
    for _, elem in iter_xml(path, ("Annotation",)):
        assert sum(1 for _ in elem.itersiblings(preceding=True)) <= 1
        root = elem.getroottree().getroot()
        largest = max(largest, sum(1 for _ in root.iter()))
        release(elem)
    assert largest < 2000
    assert len(read_annotations(path)) == 5000
