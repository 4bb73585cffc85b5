"""The ``normalize`` stage: a tile store in, a stain-normalised tile store out (resumable)."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

from wsipipe.errors import StainError, StoreError
from wsipipe.files import file_sha256
from wsipipe.stain.base import StainParams
from wsipipe.stain.slide import estimate_slide_stain

#: Attribute (inside the store's ``wsipipe`` attributes) holding the stain parameters used.
STAIN_KEY = "stain"


def normalize_store(
    source_path: Path,
    out_path: Path,
    *,
    method: str,
    target_image: Optional[Path],
    device,
    seed: int = 0,
    overwrite: bool = False,
    on_progress: Optional[Callable[[int, int], None]] = None,
    on_warning: Optional[Callable[[str], None]] = None,
):
    """Normalise every tile of ``source_path`` into ``out_path``; returns the finished ``TileStore``.

    The slide's stain parameters are estimated once (tiles sampled across the whole store) and
    recorded, with the target's, in the output's attributes under ``wsipipe.stain``; a resumed run
    reuses the recorded ones. A store that is itself the output of ``normalize`` is refused unless
    ``overwrite``. ``on_progress(done, total)`` is called in tiles after each shard.
    """
    from wsipipe.stain import default_target, get_normalizer
    from wsipipe.stain.targets import load_target_image
    from wsipipe.files import output_lock
    from wsipipe.store import check_output_location, create_derived_store, open_tile_store

    source = open_tile_store(source_path)
    earlier = source.meta.get(STAIN_KEY)
    if earlier is not None and not overwrite:
        raise StoreError(
            f"{source_path}: already stain-normalised ({earlier['method']}); normalising twice "
            "distorts colours; pass --overwrite to do it anyway"
        )
    normalizer = get_normalizer(method, device, seed=seed)
    with _warnings_to(on_warning, f"--target {target_image or '(built-in)'}"):
        if target_image is None:
            normalizer.fit(default_target(method))
            target_name = "built-in (CMU-1-Small-Region.svs)"
        else:
            try:
                normalizer.fit(load_target_image(target_image))
            except StainError as exc:
                raise StainError(f"{{target_image}} {target_image}: {exc.template}", parameter=("target_image", *exc.parameters)) from None
            target_name = f"{target_image.name} sha256:{file_sha256(target_image)[:16]}"
    with _warnings_to(on_warning, str(source_path)):
        try:
            slide = estimate_slide_stain(source.tiles, normalizer)
        except StainError as exc:
            raise StainError(f"{source_path}: cannot estimate the slide's stains: {exc}") from None
    stain_meta = {
        "method": method,
        "target_image": target_name,
        "target": normalizer.target.to_dict(),
        "source": slide.to_dict(),
    }
    check_output_location(Path(out_path))
    with output_lock(out_path, "another wsipipe run is writing this store"):  # see tile_slide
        writer = create_derived_store(
            source,
            out_path,
            stage="normalize",
            params={"method": method, "target_image": target_name, "seed": seed},
            extra_meta={STAIN_KEY: stain_meta},
            overwrite=overwrite,
        )
        if writer.already_complete:
            return open_tile_store(out_path)
        recorded = writer.store.meta[STAIN_KEY]  # a resumed run keeps the parameters it started with
        normalizer.fit(StainParams.from_dict(recorded["target"]))
        slide = StainParams.from_dict(recorded["source"])
        pending = writer.pending_shards()
        total = source.n_tiles
        done = total - sum(source.shard_slice(i).stop - source.shard_slice(i).start for i in pending)
        for index in pending:
            rows = source.shard_slice(index)
            tiles = source.tiles[rows]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tiles left unchanged are background: expected
                normalised = normalizer.transform(tiles, source=slide)
            if source.masks is None:
                writer.write_shard(index, normalised)
            else:  # annotation masks travel with their tiles
                writer.write_shard(index, normalised, source.masks[rows], source.label_fractions[rows])
            done += len(tiles)
            if on_progress is not None:
                on_progress(done, total)
        return writer.finish()


@contextmanager
def _warnings_to(on_warning: Optional[Callable[[str], None]], subject: str):
    """Hand the warnings raised inside to ``on_warning``, prefixed with what they are about."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        if on_warning is not None:
            on_warning(f"{subject}: {warning.message}")
