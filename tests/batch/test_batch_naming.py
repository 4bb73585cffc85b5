"""Output folder names: readable, unique, and never outside OUTDIR whatever the slide is called."""

from __future__ import annotations

import hashlib
import re

import pytest

from wsipipe.batch.naming import MAX_STEM_CHARS, output_name, safe_stem

SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*-[0-9a-f]{10}$")
HOSTILE = [
    "..",
    ".",
    "../../etc/passwd",
    "a/../../b.svs",
    "/abs/path/slide.svs",
    "C:\\Windows\\slide.svs",
    "~/slide.svs",
    "slide\x00.svs",
    "名前 スライド.svs",
    " spaces  everywhere .svs",
    ".hidden.svs",
    "-rf.svs",
    "x" * 300 + ".svs",
    "",
]


@pytest.mark.parametrize("key", HOSTILE)
def test_names_are_safe_single_components(key, tmp_path):
    name = output_name(key)
    assert SAFE.match(name), name
    assert len(name) <= MAX_STEM_CHARS + 11
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_same_file_name_in_two_folders_gets_two_names():
    a, b = output_name("ward A/slide.svs"), output_name("ward B/slide.svs")
    assert a != b and a.startswith("slide-") and b.startswith("slide-")
    assert a == f"slide-{hashlib.sha256(b'ward A/slide.svs').hexdigest()[:10]}"


def test_names_are_stable_and_readable():
    assert output_name("x/CMU-1 (copy).svs") == output_name("x/CMU-1 (copy).svs")
    assert safe_stem("Gewebe ä 1 (ü).tif") == "Gewebe_a_1_u"
    assert safe_stem("OS-1-detail.ome.tif") == "OS-1-detail.ome"
    assert safe_stem("..svs") == "slide"
    assert safe_stem("a\\b\\c.svs") == "c"
