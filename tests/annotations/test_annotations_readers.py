"""Reading ASAP, Aperio and GeoJSON: real files and hand-made ones covering each format feature."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import shapely
from shapely.geometry import MultiPoint, MultiPolygon, Point, Polygon

from wsipipe.annotations import detect_format, read_annotations


def test_camelyon_asap_three_tumour_polygons(camelyon_xml):
    path = camelyon_xml
    text = path.read_text()
    annotations = read_annotations(path)
    assert detect_format(path) == "asap"
    assert len(annotations) == 3 == text.count("<Annotation ")
    assert [a.label for a in annotations] == ["Tumor"] * 3
    assert [a.name for a in annotations] == ["Annotation 0", "Annotation 1", "Annotation 2"]
    assert all(a.color == "#F4FA58" and a.shape == "Polygon" for a in annotations)
    assert annotations.groups["Tumor"].color == "#FF0000" and annotations.groups["Tumor"].parent is None
    # Vertices in file order, exactly as written (independent regex parse of the file).
    blocks = re.findall(r"<Annotation .*?</Annotation>", text, re.S)
    for ann, block in zip(annotations, blocks):
        expected = [(float(x), float(y)) for x, y in re.findall(r'X="([^"]+)" Y="([^"]+)"', block)]
        assert isinstance(ann.geometry, Polygon)
        assert list(ann.geometry.exterior.coords)[:-1] == expected
        assert ann.geometry.area == pytest.approx(Polygon(expected).area)


RICH_ASAP = Path(__file__).parent / "data" / "asap_rich.xml"  # every ASAP type, groups, decimal commas


def test_asap_types_groups_decimal_commas_and_order():
    path = RICH_ASAP
    poly, rect, spline, dot, cells = read_annotations(path)
    # Coordinates sorted by Order; decimal commas read as points.
    assert list(poly.geometry.exterior.coords)[:-1] == [(0, 0), (10.5, 0), (10.5, 20.25)]
    assert poly.geometry.area == pytest.approx(10.5 * 20.25 / 2)
    assert (poly.label, poly.group, poly.color) == ("metastasis", "Tumor", "#112233")
    assert rect.shape == "Rectangle" and rect.geometry.area == 4 and rect.label == "_2"
    assert spline.shape == "Spline" and isinstance(spline.geometry, Polygon)
    assert isinstance(dot.geometry, Point) and (dot.geometry.x, dot.geometry.y) == (7.25, 8.5)
    assert dot.label == ""  # PartOfGroup="None"
    assert isinstance(cells.geometry, MultiPoint) and len(cells.geometry.geoms) == 2
    annotations = read_annotations(path)
    assert annotations.ancestors("metastasis") == ["Tumor"]
    assert annotations.groups["metastasis"].color == "#00FF00"


def test_aperio_regions_layers_ellipse_negative_region_and_mpp(tmp_path):
    path = tmp_path / "aperio.xml"
    path.write_text(
        """<Annotations MicronsPerPixel="0.5">
  <Annotation Id="1" Name="" LineColor="255">
    <Attributes><Attribute Name="Description" Id="0" Value="Tumour"/></Attributes>
    <Regions>
      <RegionAttributeHeaders><AttributeHeader Id="9999" Name="Region"/></RegionAttributeHeaders>
      <Region Id="1" Type="0"><Vertices><Vertex X="0" Y="0"/><Vertex X="4" Y="0"/><Vertex X="4" Y="4"/></Vertices></Region>
      <Region Id="2" Type="1" NegativeROA="1"><Vertices><Vertex X="1" Y="1"/><Vertex X="2" Y="1"/><Vertex X="2" Y="2"/><Vertex X="1" Y="2"/></Vertices></Region>
    </Regions>
  </Annotation>
  <Annotation Id="7" Name="Stroma" LineColor="16711680">
    <Regions><Region Id="3" Type="2"><Vertices><Vertex X="10" Y="10"/><Vertex X="30" Y="20"/></Vertices></Region></Regions>
  </Annotation>
</Annotations>"""
    )
    annotations = read_annotations(path)
    assert detect_format(path) == "aperio" and annotations.mpp == 0.5
    triangle, negative, ellipse = annotations
    assert (triangle.label, triangle.color, triangle.geometry.area) == ("Tumour", "#FF0000", 8)
    assert negative.label == "Exclusion" and negative.geometry.area == 1
    assert ellipse.label == "Stroma" and ellipse.color == "#0000FF"
    assert ellipse.geometry.bounds == pytest.approx((10, 10, 30, 20))
    assert ellipse.geometry.area == pytest.approx(3.14159 * 10 * 5, rel=0.01)


def _feature(geometry, **properties):
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def test_qupath_geojson_collections_holes_points_classes_and_object_types(tmp_path):
    square_with_hole = [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]], [[2, 2], [4, 2], [4, 4], [2, 4], [2, 2]]]
    features = [
        _feature(
            {"type": "Polygon", "coordinates": square_with_hole},
            objectType="annotation",
            classification={"name": "Tumor", "color": [200, 0, 0]},
        ),
        _feature(
            {"type": "MultiPolygon", "coordinates": [square_with_hole, [[[20, 20], [21, 20], [21, 21], [20, 20]]]]},
            objectType="detection",
            classification={"name": "Stroma", "colorRGB": -16711936},
        ),
        _feature({"type": "Point", "coordinates": [5, 6]}, objectType="annotation"),
        _feature({"type": "MultiPoint", "coordinates": [[1, 1], [2, 2]]}, objectType="cell", color=[1, 2, 3]),
    ]
    collection = tmp_path / "qupath.geojson"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(features))
    for path in (collection, bare):
        polygon, multi, point, cells = read_annotations(path)
        assert polygon.geometry.area == 100 - 4 and len(polygon.geometry.interiors) == 1
        assert (polygon.label, polygon.color, polygon.kind) == ("Tumor", "#C80000", "annotation")
        assert isinstance(multi.geometry, MultiPolygon) and multi.geometry.area == pytest.approx(96 + 0.5)
        assert (multi.label, multi.color, multi.kind) == ("Stroma", "#00FF00", "detection")
        assert isinstance(point.geometry, Point) and point.label == ""
        assert isinstance(cells.geometry, MultiPoint) and cells.kind == "detection" and cells.color == "#010203"


def test_format_is_detected_by_content_not_name(tmp_path, camelyon_xml):
    geojson_named_xml = tmp_path / "really_geojson.xml"
    geojson_named_xml.write_text(json.dumps([_feature({"type": "Point", "coordinates": [1, 2]})]))
    asap_named_json = tmp_path / "really_asap.json"
    asap_named_json.write_bytes(camelyon_xml.read_bytes())
    assert detect_format(geojson_named_xml) == "geojson"
    assert detect_format(asap_named_json) == "asap" and len(read_annotations(asap_named_json)) == 3
    assert shapely.get_num_coordinates(read_annotations(asap_named_json)[1].geometry) == 16
