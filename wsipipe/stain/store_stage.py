"""The ``normalize`` stage: a tile store in, a stain-normalised tile store out (resumable)."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

from wsipipe.errors import StainError, StoreError
from wsipipe.files import file_sha256
from wsipipe.stages.base import Progress
from wsipipe.stages.normalize import NormalizeConfig, NormalizeResult
from wsipipe.stain.base import StainParams
from wsipipe.stain.slide import estimate_slide_stain

#: Attribute (inside the store's ``wsipipe`` attributes) holding the stain parameters used.
STAIN_KEY = "stain"


def normalize_store(config: NormalizeConfig, device, progress: Progress | None = None) -> NormalizeResult:
    """Normalise every tile of ``config.input`` into ``config.output`` on the torch ``device``
    (``wsipipe.stages.normalize.run``, which says what).

    The stain parameters are recorded, with the target's, in the output's attributes under
    ``wsipipe.stain``; a resumed run reuses the recorded ones. ``progress(done, total)`` is called in
    tiles after each shard.
    """
    from wsipipe.files import output_lock
    from wsipipe.stain import default_target, get_normalizer
    from wsipipe.stain.targets import load_target_image
    from wsipipe.store import check_output_location, create_derived_store, open_tile_store

    source_path, out_path, target_image = config.input, config.output, config.target
    source = open_tile_store(source_path)
    earlier = source.meta.get(STAIN_KEY)
    if earlier is not None and not config.overwrite:
        raise StoreError(
            f"{source_path}: already stain-normalised ({earlier['method']}); normalising twice "
            "distorts colours; pass {overwrite} to do it anyway",
            parameter="overwrite",
        )
    normalizer = get_normalizer(config.method, device, seed=config.seed)
    with _warnings_about(f"--target {target_image or '(built-in)'}"):
        if target_image is None:
            normalizer.fit(default_target(config.method))
            target_name = "built-in (CMU-1-Small-Region.svs)"
        else:
            try:
                normalizer.fit(load_target_image(target_image))
            except StainError as exc:
                raise StainError(
                    f"{{target}} {target_image}: {exc.template}", parameter=("target", *exc.parameters)
                ) from None
            target_name = f"{target_image.name} sha256:{file_sha256(target_image)[:16]}"
    with _warnings_about(str(source_path)):
        try:
            slide = estimate_slide_stain(source.tiles, normalizer)
        except StainError as exc:
            raise StainError(f"{source_path}: cannot estimate the slide's stains: {exc}") from None
    stain_meta = {
        "method": config.method,
        "target_image": target_name,
        "target": normalizer.fitted_target().to_dict(),
        "source": slide.to_dict(),
    }
    check_output_location(Path(out_path))
    with output_lock(out_path, "another wsipipe run is writing this store"):  # see tile_slide
        writer = create_derived_store(
            source,
            out_path,
            stage="normalize",
            params={"method": config.method, "target_image": target_name, "seed": config.seed},
            extra_meta={STAIN_KEY: stain_meta},
            overwrite=config.overwrite,
        )
        if writer.already_complete:
            return _result(config, open_tile_store(out_path), device)
        recorded = writer.building.meta[STAIN_KEY]  # a resumed run keeps the parameters it started with
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
            if progress is not None:
                progress(done, total)
        return _result(config, writer.finish(), device)


def _result(config: NormalizeConfig, store, device) -> NormalizeResult:
    return NormalizeResult(output=store.path, n_tiles=store.n_tiles, method=config.method, device=str(device))


@contextmanager
def _warnings_about(subject: str):
    """Re-issue the warnings raised inside prefixed with what they are about (the target, the store)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        warnings.warn(f"{subject}: {warning.message}", warning.category, stacklevel=3)
