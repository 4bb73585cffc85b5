"""One class vocabulary and one palette for every output.

A model names its classes as it was trained ("tumour", "cancer", ...); every output a user opens
(regions, nuclei, the prediction store, the overlay, the report, the viewer) shows them under
QuPath's built-in names and colours where one exists, so QuPath makes one class of a slide's
regions and nuclei, not two. Unknown names keep their own spelling and take a fixed colour by
class index, the same one everywhere.
"""

from __future__ import annotations

#: QuPath's built-in classes (``PathClass.StandardPathClasses``) and their colours.
QUPATH_CLASSES: dict[str, tuple[int, int, int]] = {
    "Tumor": (200, 0, 0),
    "Stroma": (150, 200, 150),
    "Immune cells": (160, 90, 160),
    "Necrosis": (50, 50, 50),
    "Other": (255, 200, 0),
    "Region*": (0, 0, 180),
    "Ignore*": (180, 180, 180),
}
#: Model class names (lower case) that mean a built-in class.
ALIASES = {
    "tumour": "Tumor",
    "tumor": "Tumor",
    "cancer": "Tumor",
    "carcinoma": "Tumor",
    "malignant": "Tumor",
    "stroma": "Stroma",
    "immune": "Immune cells",
    "immune cells": "Immune cells",
    "lymphocytes": "Immune cells",
    "inflammatory": "Immune cells",
    "necrosis": "Necrosis",
    "necrotic": "Necrosis",
    "other": "Other",
}
#: The class of a model's class index 0 and of pixels outside the tissue: never drawn.
BACKGROUND = "Background"
#: Colours of classes without a built-in name, by class index (index 0 unused).
FALLBACK_COLOURS = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (128, 128, 0),
    (0, 128, 128),
]
#: Nuclei outside the tumour region: QuPath's "Other".
NON_TUMOUR_NUCLEUS = "Other"


def display_name(name: str) -> str:
    """The name every output uses for a model class called ``name``."""
    key = name.strip().lower()
    if key == "background":
        return BACKGROUND
    return ALIASES.get(key, name.strip())


def is_tumour(name: str) -> bool:
    return display_name(name) == "Tumor"


def class_colour(name: str, index: int) -> tuple[int, int, int]:
    """RGB of class ``index`` called ``name`` (a model's or a display name)."""
    shown = display_name(name)
    if shown in QUPATH_CLASSES:
        return QUPATH_CLASSES[shown]
    if index == 0 or shown == BACKGROUND:
        return (0, 0, 0)
    return FALLBACK_COLOURS[1 + (index - 1) % (len(FALLBACK_COLOURS) - 1)]


def palette(class_names: list[str]) -> list[tuple[int, int, int]]:
    """RGB by class index for a model's classes (index 0, background, black and never drawn)."""
    return [(0, 0, 0) if i == 0 else class_colour(name, i) for i, name in enumerate(class_names)]


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02X}{:02X}{:02X}".format(*rgb)
