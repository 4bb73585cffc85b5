// wsipipe view: the slide and its overlays in OpenSeadragon, with a scale bar, legend, figures,
// region table and model provenance. Everything comes from the server that served this page.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const el = (tag, props, children) => {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    (children || []).forEach((child) => node.append(child));
    return node;
  };
  const fmt = (value, digits) => (value === null || value === undefined ? "–" : Number(value).toPrecision(digits || 3));
  const percent = (value) => (value === null || value === undefined ? "–" : (100 * value).toFixed(1) + " %");

  // The longest "nice" length (1, 2 or 5 x 10^n µm) whose bar is at most maxPx screen pixels.
  function niceLength(umPerPx, maxPx) {
    const limit = umPerPx * maxPx;
    let best = null;
    for (let exponent = -2; exponent <= 6; exponent++) {
      for (const step of [1, 2, 5]) {
        const length = step * Math.pow(10, exponent);
        if (length <= limit) best = length;
      }
    }
    return best;
  }

  function lengthLabel(um) {
    return um >= 1000 ? +(um / 1000).toPrecision(6) + " mm" : +um.toPrecision(6) + " µm";
  }

  // The viewer starts at once, in parallel with the page's figures (info.json).
  const viewer = OpenSeadragon({
    id: "viewer",
    prefixUrl: "/static/images/",
    tileSources: "slide.dzi",
    drawer: "canvas",
    showNavigator: true,
    autoHideControls: false,
    navigatorPosition: "TOP_RIGHT",
    immediateRender: true,
    maxZoomPixelRatio: 4,
    imageLoaderLimit: 8,
    timeout: 120000,
    crossOriginPolicy: false,
    animationTime: 0.6,
  });
  const opened = new Promise(function (resolve) { viewer.addOnceHandler("open", resolve); });
  // Overlays are added once the slide is drawn (or after 3 s), so their first tiles do not
  // delay the slide's.
  const slideDrawn = opened.then(function () {
    return new Promise(function (resolve) {
      const image = viewer.world.getItemAt(0);
      if (image.getFullyLoaded()) { resolve(); return; }
      image.addOnceHandler("fully-loaded-change", resolve);
      setTimeout(resolve, 3000);
    });
  });
  window.wsipipeView = { viewer: viewer, info: null, overlays: {}, ready: false };
  viewer.addHandler("open-failed", function (event) { $("status").textContent = "the slide failed to open: " + event.message; });

  function start(info) {
    document.title = "wsipipe view: " + info.name;
    $("title").textContent = info.name;
    const overlays = window.wsipipeView.overlays;
    window.wsipipeView.info = info;

    function slideImage() { return viewer.world.getItemAt(0); }

    function updateScaleBar() {
      const image = slideImage();
      if (!image || !info.mpp) { $("scalebar").hidden = true; return; }
      const screenPxPerImagePx = image.viewportToImageZoom(viewer.viewport.getZoom(true));
      const umPerScreenPx = info.mpp / screenPxPerImagePx;
      const length = niceLength(umPerScreenPx, 160);
      if (length === null) { $("scalebar").hidden = true; return; }
      $("scalebar").hidden = false;
      $("scalebar-line").style.width = (length / umPerScreenPx).toFixed(2) + "px";
      $("scalebar").dataset.um = String(length);
      $("scalebar-label").textContent = lengthLabel(length);
    }

    opened.then(updateScaleBar);
    slideDrawn.then(function () {
      info.overlays.forEach(function (spec, index) {
        viewer.addTiledImage({
          tileSource: "overlay/" + spec.key + ".dzi",
          opacity: spec.visible ? spec.opacity : 0,
          index: index + 1,
          success: function (event) {
            overlays[spec.key] = event.item;
            if (Object.keys(overlays).length === info.overlays.length) window.wsipipeView.ready = true;
          },
          error: function () { $("status").textContent = "overlay " + spec.label + " failed to load"; },
        });
      });
      if (!info.overlays.length) window.wsipipeView.ready = true;
      updateScaleBar();
    });
    viewer.addHandler("animation", updateScaleBar);
    viewer.addHandler("animation-finish", updateScaleBar);
    viewer.addHandler("resize", updateScaleBar);

    // Overlays: a checkbox and an opacity slider each.
    info.overlays.forEach(function (spec) {
      const box = el("input", { type: "checkbox", checked: spec.visible, id: "overlay-" + spec.key });
      const slider = el("input", { type: "range", min: 0, max: 100, value: Math.round(spec.opacity * 100), id: "opacity-" + spec.key });
      slider.title = "opacity";
      const apply = function () {
        const item = overlays[spec.key];
        if (item) item.setOpacity(box.checked ? slider.value / 100 : 0);
      };
      box.addEventListener("change", apply);
      slider.addEventListener("input", apply);
      const label = el("label", { htmlFor: box.id }, [box, " " + spec.label]);
      $("overlays").append(el("div", { className: "overlay" }, [label, slider]));
    });
    if (!info.overlays.length) $("overlays-section").hidden = true;

    // Legend: class colours, nuclei classes (outlines), the tissue colour, the heatmap scale.
    info.legend.forEach(function (entry) {
      const swatch = el("span", { className: "swatch" + (entry.outline ? " outline" : "") });
      swatch.style.background = entry.colour;
      swatch.style.borderColor = entry.outline ? entry.colour : "#888";
      $("legend").append(el("div", {}, [swatch, entry.label]));
    });
    if (info.heat) {
      const bar = el("span", { className: "gradient" });
      bar.style.background = "linear-gradient(to right, " + info.heat.stops.join(", ") + ")";
      $("legend").append(el("div", {}, [info.heat.label + ": 0", bar, percent(info.heat.max)]));
    }
    if (!info.legend.length && !info.heat) $("legend-section").hidden = true;

    // Regions: click a row to zoom to its bounds.
    info.regions.forEach(function (region, index) {
      const row = el("tr", { id: "region-" + index }, [
        el("td", { textContent: region.name }),
        el("td", { textContent: fmt(region.area_mm2) }),
        el("td", { textContent: region.nuclei === null ? "–" : String(region.nuclei) }),
        el("td", { textContent: percent(region.cellularity) }),
      ]);
      row.addEventListener("click", function () {
        const b = region.bounds;
        const rect = slideImage().imageToViewportRectangle(b[0], b[1], b[2] - b[0], b[3] - b[1]);
        viewer.viewport.fitBounds(rect);
      });
      $("regions").tBodies[0].append(row);
    });
    $("regions-section").hidden = !info.regions.length;

    info.figures.forEach(function (pair) {
      $("figures").tBodies[0].append(el("tr", {}, [el("th", { textContent: pair[0] }), el("td", { textContent: pair[1] })]));
    });
    $("figures-section").hidden = !info.figures.length;

    const model = info.model;
    if (model) {
      const rows = [
        ["name", model.name],
        ["SHA-256", model.sha256 ? model.sha256.slice(0, 16) + "…" : "–"],
        ["architecture", model.architecture || "–"],
        ["µm per pixel", fmt(model.mpp)],
        ["classes", (model.classes || []).join(", ")],
      ];
      if (model.trained_on) rows.push(["trained on", model.trained_on]);
      if (info.run && info.run.date) rows.push(["run date", info.run.date]);
      if (info.run && info.run.command) rows.push(["command", info.run.command]);
      rows.forEach(function (pair) {
        $("model").tBodies[0].append(el("tr", {}, [el("th", { textContent: pair[0] }), el("td", { textContent: pair[1] })]));
      });
      $("model-section").hidden = false;
    }

    info.files.forEach(function (name) {
      $("files").append(el("li", {}, [el("a", { href: "files/" + name, textContent: name, download: name })]));
    });
    $("files-section").hidden = !info.files.length;
  }

  fetch("info.json")
    .then(function (response) {
      if (!response.ok) throw new Error("info.json: HTTP " + response.status);
      return response.json();
    })
    .then(start)
    .catch(function (error) { $("status").textContent = String(error); });
})();
