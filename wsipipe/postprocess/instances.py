"""Instance label maps shared by the classical and the learned nuclei methods: the seeded watershed
and the size filter.

Most nuclear regions hold a single seed, and skimage's watershed spends its time flooding them
pixel by pixel only to give every pixel that seed's label. ``seeded_watershed`` labels those
regions by lookup and floods only the regions where two or more seeds compete, with the same
result label for label (tests compare it with the plain call), save where seeds tie exactly in
the flooding order: skimage breaks such ties by the layout of its heap, which a smaller flood
changes (on the 28 nuclei images, 5 pixels of one image in 560 label maps).
"""

from __future__ import annotations

import numpy as np


def seeded_watershed(
    surface: np.ndarray, markers: np.ndarray, components: np.ndarray, compactness: float = 0.0
) -> np.ndarray:
    """``skimage.segmentation.watershed(surface, markers, mask=components > 0, compactness=...)``.

    ``components`` are the mask's 4-connected components (``scipy.ndimage.label(mask)[0]``, which
    the caller has anyway); ``markers`` are > 0 at the seeds, all inside the mask. A component
    with one seed becomes that seed's label, one with none stays 0, as the watershed leaves them.
    The watershed runs once over the bounding box of the components with two or more seeds, with
    the others masked out: the flooding of one component never reaches another, so each floods as
    it would in the whole image.
    """
    from scipy import ndimage
    from skimage.segmentation import watershed

    seeds = np.flatnonzero(markers)
    owner = components.ravel()[seeds]
    per_component = np.bincount(owner, minlength=int(components.max()) + 1)
    per_component[0] = 0
    lookup = np.zeros(per_component.size, dtype=np.int32)
    alone = per_component[owner] == 1
    lookup[owner[alone]] = markers.ravel()[seeds[alone]]
    labels = lookup[components]
    shared = per_component >= 2
    if not shared.any():
        return labels
    boxes = [box for box, is_shared in zip(ndimage.find_objects(components), shared[1:]) if is_shared]
    window = tuple(slice(min(b[axis].start for b in boxes), max(b[axis].stop for b in boxes)) for axis in range(2))
    inside = shared[components[window]]
    flooded = watershed(surface[window], markers[window], mask=inside, compactness=compactness)
    labels[window] = np.where(inside, flooded, labels[window])
    return labels


def drop_small(labels: np.ndarray, min_pixels: float) -> np.ndarray:
    """int32 labels renumbered 1..n in their order after removing objects under ``min_pixels`` pixels."""
    areas = np.bincount(labels.ravel())
    keep = areas >= min_pixels
    keep[0] = False
    lookup = np.zeros(areas.size, dtype=np.int32)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lookup[labels]
