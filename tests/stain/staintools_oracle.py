"""StainTools' Vahadane run to convergence: the reference our Vahadane is compared with.

StainTools runs SPAMS' online dictionary learning multithreaded for a fixed time (1 s). On a busy
machine the threads starve and it stops far from converged; and a fixed iteration count is not
enough either: 4000 iterations are about one pass over the tissue of a 1000 x 1000 image, which
leaves its stain vectors up to about 1 degree (and its output up to about 3.5 grey levels) from
where SPAMS itself ends when it runs on (measured on the MoNuSeg images; docs/stain.md). Here SPAMS
runs single-threaded (deterministic) in chunks of 4000 iterations that carry its online state on,
until a chunk turns neither stain vector by more than 0.01 degree. Each image's dictionary is
learned once (StainTools' transform learns it again for the same pixels).

Used by tests/stain/test_stain_oracle.py and benchmarks/compare_vahadane.py; test-only (StainTools
and spams-bin are in the ``test`` extra, never imported by wsipipe).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

CHUNK_ITERATIONS = 4000
CONVERGED_DEGREES = 0.01
MAX_ITERATIONS = 400_000


def angle(u: np.ndarray, v: np.ndarray) -> float:
    """Degrees between two vectors."""
    return float(np.degrees(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1))))


@contextmanager
def converged_staintools() -> Iterator:
    """``staintools`` whose SPAMS calls are single-threaded and learn dictionaries to convergence."""
    import spams
    import staintools

    originals = {name: getattr(spams, name) for name in ("trainDL", "lasso")}
    learned = {}

    def train_dl(X, **kwargs):
        key = hashlib.sha1(np.ascontiguousarray(X).tobytes()).hexdigest()
        if key not in learned:
            kwargs = {**kwargs, "numThreads": 1, "iter": CHUNK_ITERATIONS, "return_model": True}
            dictionary, model = originals["trainDL"](X, **kwargs)
            for _ in range(MAX_ITERATIONS // CHUNK_ITERATIONS - 1):
                previous = dictionary
                dictionary, model = originals["trainDL"](X, D=previous, model=model, **kwargs)
                if max(angle(dictionary[:, k], previous[:, k]) for k in range(dictionary.shape[1])) < CONVERGED_DEGREES:
                    break
            learned[key] = dictionary
        return learned[key].copy(order="K")

    spams.trainDL = train_dl
    spams.lasso = lambda *args, **kwargs: originals["lasso"](*args, **{**kwargs, "numThreads": 1})
    try:
        yield staintools
    finally:
        for name, function in originals.items():
            setattr(spams, name, function)


def compare_vahadane(staintools, images: dict[str, np.ndarray], target: np.ndarray) -> list[dict]:
    """Per image: our Vahadane against (converged) StainTools', both fitted to ``target``.

    ``mad``: mean absolute difference of the normalised images (grey levels) as StainTools
    returns them (truncated to uint8); ``mad_rounded``: against StainTools' result rounded to the
    nearest level as ours is; ``angle_h``/``angle_e``: degrees between the stain vectors;
    ``objective``: Vahadane's objective on StainTools' tissue pixels for each matrix (``ours``,
    ``staintools``): the lower one is the better solution of the method's problem.
    """
    from staintools.miscellaneous.get_concentrations import get_concentrations
    from staintools.miscellaneous.optical_density_conversion import convert_RGB_to_OD
    from staintools.tissue_masks.luminosity_threshold_tissue_locator import LuminosityThresholdTissueLocator

    from wsipipe.stain import get_normalizer

    ours = get_normalizer("vahadane").fit(target)
    theirs = staintools.StainNormalizer("vahadane")
    theirs.fit(target.copy())  # StainTools writes into its input
    rows = []
    for name, image in images.items():
        our_matrix = ours.estimate(image).array("stain_matrix")
        our_out = ours.transform(image)
        their_matrix = staintools.VahadaneStainExtractor.get_stain_matrix(image.copy())
        their_out = theirs.transform(image.copy())
        concentrations = get_concentrations(image.copy(), their_matrix)  # StainTools' mapping, rounded
        scale = theirs.maxC_target / np.percentile(concentrations, 99, axis=0).reshape(1, 2)
        rounded = np.rint(255 * np.exp(-(concentrations * scale) @ theirs.stain_matrix_target)).clip(0, 255)
        tissue = LuminosityThresholdTissueLocator.get_tissue_mask(image.copy()).reshape(-1)
        od = convert_RGB_to_OD(image.copy()).reshape(-1, 3)[tissue]
        rows.append(
            {
                "image": name,
                "pixels": int(image.shape[0] * image.shape[1]),
                "tissue_fraction": round(float(tissue.mean()), 3),
                "mad": float(np.abs(our_out.astype(int) - their_out.astype(int)).mean()),
                "mad_rounded": float(np.abs(our_out.reshape(-1, 3) - rounded).mean()),
                "angle_h": angle(our_matrix[0], their_matrix[0]),
                "angle_e": angle(our_matrix[1], their_matrix[1]),
                "objective": {
                    "ours": vahadane_objective(od, our_matrix),
                    "staintools": vahadane_objective(od, their_matrix),
                },
            }
        )
    return rows


def vahadane_objective(od: np.ndarray, stains: np.ndarray, penalty: float = 0.1) -> float:
    """``mean 0.5 |od - c S|^2 + penalty |c|_1`` with each pixel's best ``c >= 0`` (SPAMS' lasso)."""
    import spams

    codes = (
        spams.lasso(
            np.asfortranarray(od.T), D=np.asfortranarray(stains.T), mode=2, lambda1=penalty, pos=True, numThreads=1
        )
        .toarray()
        .T
    )
    return float(np.mean(0.5 * ((od - codes @ stains) ** 2).sum(axis=1) + penalty * codes.sum(axis=1)))
