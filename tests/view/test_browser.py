"""The viewer and report.html in headless Chromium, on a real ``segment --nuclei`` output."""

from __future__ import annotations

import json
import time
import urllib.request

import cv2
import numpy as np
import pytest

READY = (
    "const v = window.wsipipeView; return !!(v && v.ready && v.viewer.world.getItemCount() === "
    "v.info.overlays.length + 1 && v.viewer.world.getItemAt(0).getFullyLoaded());"
)


def wait_for(driver, script: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def settle(driver) -> None:
    """Until every shown tiled image is loaded and drawn, and nothing moves."""
    wait_for(
        driver,
        "const v = window.wsipipeView.viewer; for (let i = 0; i < v.world.getItemCount(); i++) {"
        " const item = v.world.getItemAt(i); if (item.getOpacity() > 0 && !item.getFullyLoaded()) return false; }"
        " return Math.abs(v.viewport.getZoom(true) - v.viewport.getZoom(false)) < 1e-9;",
    )
    time.sleep(0.4)  # the canvas draws on the next animation frames


def open_viewer(browser, url: str) -> None:
    browser.get_log("browser")
    browser.get_log("performance")  # start both logs afresh
    browser.get(url)
    wait_for(browser, READY)
    settle(browser)


def screenshot(browser) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(browser.get_screenshot_as_png(), np.uint8), cv2.IMREAD_COLOR)


def responses(browser) -> list[tuple[str, int]]:
    out = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.responseReceived":
            response = message["params"]["response"]
            out.append((response["url"], response["status"]))
    return out


def requested(browser) -> list[str]:
    return [
        json.loads(e["message"])["message"]["params"]["request"]["url"]
        for e in browser.get_log("performance")
        if json.loads(e["message"])["message"]["method"] == "Network.requestWillBeSent"
    ]


@pytest.fixture()
def viewer_url(serve, segment_out):
    return serve(segment_out).url


def test_page_loads_tiles_and_overlays_without_console_errors(browser, viewer_url):
    open_viewer(browser, viewer_url)
    seen = responses(browser)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    slide_tiles = [url for url, _ in seen if "/slide_files/" in url]
    overlay_tiles = [url for url, _ in seen if "/overlay/" in url and url.endswith(".png")]
    assert slide_tiles and overlay_tiles
    assert all(status == 200 for _, status in seen), [s for s in seen if s[1] != 200]
    # Non-blank: slide tiles show tissue somewhere, the class overlay draws tumour somewhere.
    slide = [
        cv2.imdecode(np.frombuffer(urllib.request.urlopen(u).read(), np.uint8), cv2.IMREAD_COLOR) for u in slide_tiles
    ]
    assert max(float(image.std()) for image in slide) > 20
    labels = [u for u in overlay_tiles if "/labels_files/" in u]
    alphas = [
        cv2.imdecode(np.frombuffer(urllib.request.urlopen(u).read(), np.uint8), cv2.IMREAD_UNCHANGED)[..., 3]
        for u in labels
    ]
    assert any(alpha.any() for alpha in alphas)


def test_toggling_an_overlay_changes_the_picture(browser, viewer_url):
    open_viewer(browser, viewer_url)
    before = screenshot(browser)
    browser.find_element("id", "overlay-labels").click()
    settle(browser)
    after = screenshot(browser)
    changed = np.any(before != after, axis=2)
    assert changed.sum() > 500  # the tumour's tint is gone
    browser.find_element("id", "overlay-labels").click()
    settle(browser)
    assert np.any(screenshot(browser) != before, axis=2).sum() < changed.sum() / 10  # and back


def test_scale_bar_matches_the_slides_um_per_px_at_two_zooms(browser, viewer_url, segment_out):
    mpp = json.loads((segment_out / "report.json").read_text())["mpp"]
    open_viewer(browser, viewer_url)
    labels = set()
    for zoom in (None, 6.0):
        if zoom is not None:
            browser.execute_script(f"window.wsipipeView.viewer.viewport.zoomTo({zoom}, null, true);")
            settle(browser)
        # Screen px per image px from OpenSeadragon's own mapping of two image points.
        px_per_image_px = browser.execute_script(
            "const image = window.wsipipeView.viewer.world.getItemAt(0);"
            "const a = image.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));"
            "const b = image.imageToViewerElementCoordinates(new OpenSeadragon.Point(1000, 0));"
            "return (b.x - a.x) / 1000;"
        )
        bar = browser.find_element("id", "scalebar-line")
        length_um = float(browser.find_element("id", "scalebar").get_attribute("data-um"))
        label = browser.find_element("id", "scalebar-label").text
        expected_px = length_um / mpp * px_per_image_px
        assert abs(bar.rect["width"] - expected_px) <= 1.0, (zoom, label)
        number, unit = label.split()
        assert float(number) * {"µm": 1, "mm": 1000}[unit] == pytest.approx(length_um)
        labels.add(label)
    assert len(labels) == 2


def test_clicking_a_region_row_zooms_to_the_region(browser, viewer_url):
    open_viewer(browser, viewer_url)
    region = browser.execute_script("return window.wsipipeView.info.regions[0];")
    browser.find_element("id", "region-0").click()
    time.sleep(0.2)
    settle(browser)
    view = browser.execute_script(
        "const v = window.wsipipeView.viewer; const r = v.world.getItemAt(0).viewportToImageRectangle("
        "v.viewport.getBounds(true)); return [r.x, r.y, r.x + r.width, r.y + r.height];"
    )
    x0, y0, x1, y1 = region["bounds"]
    tolerance = 2  # level-0 px
    assert view[0] <= x0 + tolerance and view[1] <= y0 + tolerance
    assert view[2] >= x1 - tolerance and view[3] >= y1 - tolerance
    # Fitted: the region spans the view in one direction.
    fill = max((x1 - x0) / (view[2] - view[0]), (y1 - y0) / (view[3] - view[1]))
    assert fill > 0.95


def test_report_html_renders_with_no_network_requests(browser, segment_out):
    browser.get_log("performance")
    browser.get((segment_out / "report.html").as_uri())
    wait_for(browser, "return document.readyState === 'complete';")
    image = screenshot(browser)
    assert float(image.std()) > 10
    pictures = browser.find_elements("css selector", ".picture")
    assert len(pictures) == 3  # slide, predicted tumour, cellularity
    for picture in pictures:  # each with its scale bar, drawn inside the picture
        bar = picture.find_element("css selector", "svg.scale rect.bar")
        assert 0 < bar.rect["width"] < picture.rect["width"] / 3
    regions = browser.find_elements("xpath", "//h2[text()='Regions']/following-sibling::table[1]//tr")
    assert [r.text.split()[:2] for r in regions[1:]] == [["Tumor", "1"]]  # QuPath's name (wsipipe.classes)
    urls = requested(browser)
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def first_paint(browser, url: str) -> float:
    """Seconds from asking for the page to the slide drawn whole at its first view."""
    browser.get("about:blank")
    started = time.perf_counter()
    browser.get(url)
    wait_for(
        browser,
        "const v = window.wsipipeView; return !!(v && v.viewer.world.getItemAt(0) && "
        "v.viewer.world.getItemAt(0).getFullyLoaded());",
    )
    return time.perf_counter() - started


@pytest.mark.parametrize("name", ["dapi_ndpi", "ome_tiff"])
def test_shared_slides_paint_within_two_seconds(browser, serve, request, name):
    # The better of two visits, each to a fresh server (empty tile cache): the first also pays for
    # the browser parsing OpenSeadragon, on a machine shared with other jobs.
    seconds = min(first_paint(browser, serve(request.getfixturevalue(name)).url) for _ in range(2))
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    assert seconds < 2.0


@pytest.mark.slow
def test_a_40000_px_synthetic_slide_paints_within_two_seconds(browser, serve, tmp_path):
    from wsipipe.slide.synthetic import SyntheticSpec, write_synthetic_slide

    slide = write_synthetic_slide(tmp_path / "wide.tif", SyntheticSpec(40000, 6000))
    seconds = min(first_paint(browser, serve(slide).url) for _ in range(2))
    assert browser.execute_script("return window.wsipipeView.info.width;") == 40000
    assert seconds < 2.0
