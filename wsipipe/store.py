"""The zarr v3 tile store every stage reads and writes, and its resume mechanism.

Layout of a store (a zarr v3 group, readable with plain ``zarr``):

- ``tiles``           (N, T, T, 3) uint8, one tile per chunk, ``tiles_per_shard`` tiles per shard file
- ``coords``          (N, 2) int64, level-0 x, y of each tile's top-left corner
- ``tissue_fraction`` (N,) float32
- ``thumbnail``       (h, w, 3) uint8, the low-resolution image tissue was detected on
- ``tissue_mask``     (h, w) uint8 (1 = tissue), same grid as ``thumbnail``
- with annotations (``wsipipe tile --annotations``):
  ``masks`` (N, T, T) uint8 label values aligned with ``tiles`` (chunked and sharded alike) and
  ``label_fractions`` (N, L) float32, the share of each tile's pixels per label-map entry, in the
  order of the attribute ``labels`` (``names`` and ``values``)
- attributes under ``wsipipe``: provenance, the run's ``params`` and the ``complete`` flag.

A store is built under ``<name>.partial`` next to its final path. Work is written shard by
shard, each shard whole by one writer; once a shard is on disk its index is appended (and
fsynced) to a journal file in the partial store. A restarted run redoes only the shards the
journal lacks. When every shard is done the ``complete`` flag is set, the journal removed and
the directory renamed to its final name, so the final store is the same as that of an
uninterrupted run.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsipipe import __version__
from wsipipe.errors import OutputError, StoreError
from wsipipe.files import check_output_folder, write_atomic

ATTRS_KEY = "wsipipe"
JOURNAL_NAME = "wsipipe-done-shards.txt"
PARTIAL_SUFFIX = ".partial"
# Shards of about 25 MB of raw pixels (32 tiles of 512 px), at most 64 tiles: few files, and the
# memory held by the shards in flight (two per worker) is the same whatever the slide's size.
_SHARD_PIXELS = 32 * 512 * 512
_MAX_TILES_PER_SHARD = 64
# Chunk compression: Blosc-LZ4 at level 1, no shuffle (a no-op on bytes). Level 1 compresses
# tiles within 0.5 % of level 5 in about three quarters of the time (decoded JPEG hardly compresses).
BLOSC_CNAME = "lz4"
BLOSC_CLEVEL = 1


def tiles_per_shard_for(tile_size: int) -> int:
    """Tiles per shard for tiles of ``tile_size`` px."""
    return int(min(_MAX_TILES_PER_SHARD, max(1, _SHARD_PIXELS // (tile_size * tile_size))))


class TileStore:
    """An open tile store (read-only use; writing goes through ``StoreWriter``).

    The zarr group is opened on first use: a store being written needs only its metadata, and
    importing zarr costs a fifth of a second.
    """

    def __init__(self, path: Path, meta: dict, group=None):
        self.path = Path(path)
        self.meta: dict = dict(meta)
        self._group = group

    @property
    def group(self):
        if self._group is None:
            import zarr

            self._group = zarr.open_group(store=str(self.path), mode="r")
        return self._group

    @property
    def tiles(self):
        return self.group["tiles"]

    @property
    def coords(self):
        return self.group["coords"]

    @property
    def tissue_fraction(self):
        return self.group["tissue_fraction"]

    @property
    def masks(self):
        """Annotation masks (N, T, T), or None when tiled without annotations."""
        return self.group["masks"] if "labels" in self.meta else None

    @property
    def label_fractions(self):
        """Per-tile label fractions (N, L), or None when tiled without annotations."""
        return self.group["label_fractions"] if "labels" in self.meta else None

    @property
    def tile_size(self) -> int:
        return int(self.meta["tile_size"])

    @property
    def mpp(self) -> float | None:
        """µm/px of the tiles (None when the slide's µm/px is unknown and tiling was by level)."""
        return self.meta.get("mpp")

    @property
    def n_tiles(self) -> int:
        return int(self.meta["n_tiles"])

    @property
    def tiles_per_shard(self) -> int:
        return int(self.meta["tiles_per_shard"])

    @property
    def n_shards(self) -> int:
        return -(-self.n_tiles // self.tiles_per_shard)

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    def shard_slice(self, index: int) -> slice:
        start = index * self.tiles_per_shard
        return slice(start, min(start + self.tiles_per_shard, self.n_tiles))

    @property
    def thumbnail(self) -> np.ndarray:
        return self.group["thumbnail"][...]

    @property
    def tissue_mask(self) -> np.ndarray:
        return self.group["tissue_mask"][...]


def open_tile_store(path: str | os.PathLike, require_complete: bool = True) -> TileStore:
    """Open a wsipipe store; ``StoreError`` if missing, not a wsipipe store or (when required) incomplete."""
    import zarr

    path = Path(path)
    if not path.exists():
        partial = _partial_path(path)
        hint = (
            f" (an unfinished run is at {partial}; run the same command again to finish it)" if partial.exists() else ""
        )
        raise StoreError(f"{path}: no such store{hint}")
    try:
        group = zarr.open_group(store=str(path), mode="r")
        if ATTRS_KEY not in group.attrs or "tiles" not in group:
            raise KeyError(ATTRS_KEY)
        store = TileStore(path, group.attrs[ATTRS_KEY], group)
    except Exception as exc:  # zarr raises many types for non-zarr input
        raise StoreError(f"{path}: not a wsipipe tile store") from exc
    if require_complete and not store.complete:
        raise StoreError(f"{path}: the store is incomplete; run the command that makes it again to finish it")
    return store


@dataclass(frozen=True)
class ShardWriter:
    """Writes whole shards into a partial store, from any thread or process.

    A shard's file is encoded here, in zarr v3's ``sharding_indexed`` format (each chunk
    Blosc-compressed, then the chunk index and its CRC32C), and written at once: going through
    zarr's array API costs several times the compression itself per tile. Chunks equal to the
    fill value (0) are left out, as zarr leaves them. Plain ``zarr`` reads the result; the tests
    check that it equals what zarr itself writes.
    """

    store_dir: str
    tiles_per_shard: int

    def write(
        self, index: int, tiles: np.ndarray, masks: np.ndarray | None = None, label_fractions: np.ndarray | None = None
    ) -> int:
        """Write shard ``index`` (its tiles, in order, and their masks and label fractions when the
        store has annotations); returns the number of tiles written."""
        root = Path(self.store_dir)
        write_shard_file(root / "tiles" / "c" / str(index) / "0" / "0" / "0", tiles, self.tiles_per_shard)
        if masks is not None:
            write_shard_file(root / "masks" / "c" / str(index) / "0" / "0", masks, self.tiles_per_shard)
            if label_fractions is None:
                raise StoreError(f"{self.store_dir}: shard {index} has masks but no label fractions")
            padded = np.zeros((self.tiles_per_shard, label_fractions.shape[1]), "<f4")
            padded[: len(label_fractions)] = label_fractions
            path = root / "label_fractions" / "c" / str(index) / "0"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_compress(padded))
        return len(tiles)


def write_shard_file(path: Path, chunks: np.ndarray, chunks_per_shard: int) -> None:
    """One shard file holding ``chunks`` (one chunk per item along the first axis), written chunk
    by chunk as each is compressed (no shard-sized buffer)."""
    import google_crc32c

    index = np.full((chunks_per_shard, 2), np.iinfo(np.uint64).max, dtype="<u8")  # max: chunk absent
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        offset = 0
        for position, chunk in enumerate(chunks):
            if not chunk.any():
                continue
            data = _compress(chunk)
            handle.write(data)
            index[position] = (offset, len(data))
            offset += len(data)
        raw_index = index.tobytes()
        handle.write(raw_index + google_crc32c.value(raw_index).to_bytes(4, "little"))


def _compress(array: np.ndarray) -> bytes | bytearray:
    """One chunk as zarr's Blosc codec (numcodecs) encodes it with the settings
    ``_write_array_meta`` declares, byte for byte (tested), through imagecodecs' build of the
    same c-blosc: imagecodecs is loaded already for decoding, numcodecs would cost ~15-60 ms to import."""
    import imagecodecs

    return imagecodecs.blosc_encode(
        np.ascontiguousarray(array),  # type: ignore[arg-type]  # its stubs say bytes; any buffer works
        level=BLOSC_CLEVEL,
        compressor=BLOSC_CNAME,
        shuffle=0,
        typesize=array.dtype.itemsize,
        blocksize=0,
        numthreads=1,
    )


class StoreWriter:
    """A store being built (or resumed) under its partial path, and how to finish it."""

    def __init__(self, final_path: Path, store: TileStore | None):
        self.final_path = final_path
        self.partial_path = _partial_path(final_path)
        #: None when the final store already exists, complete, with the same parameters.
        self.store = store

    @property
    def already_complete(self) -> bool:
        return self.store is None

    @property
    def building(self) -> TileStore:
        """The store being built (one that is complete already has nothing to write)."""
        if self.store is None:
            raise StoreError(f"{self.final_path}: the store is complete; there is nothing to write")
        return self.store

    def pending_shards(self) -> list[int]:
        done = _read_journal(self.partial_path)
        return [i for i in range(self.building.n_shards) if i not in done]

    def shard_writer(self) -> ShardWriter:
        return ShardWriter(str(self.partial_path), self.building.tiles_per_shard)

    def record_done(self, index: int) -> None:
        """Journal shard ``index`` as written (call only once its data is on disk)."""
        with open(self.partial_path / JOURNAL_NAME, "a", encoding="ascii") as journal:
            journal.write(f"{index}\n")
            journal.flush()
            os.fsync(journal.fileno())

    def write_shard(
        self, index: int, tiles: np.ndarray, masks: np.ndarray | None = None, label_fractions: np.ndarray | None = None
    ) -> None:
        """Write and journal one shard from this process."""
        self.shard_writer().write(index, tiles, masks, label_fractions)
        self.record_done(index)

    def finish(self) -> TileStore:
        """Mark complete, drop the journal, move into place (replacing an old store on --overwrite)."""
        missing = self.pending_shards()
        if missing:
            raise StoreError(f"{self.partial_path}: {len(missing)} shards not written yet")
        meta = {**self.building.meta, "complete": True}
        _write_group(self.partial_path, meta)
        (self.partial_path / JOURNAL_NAME).unlink(missing_ok=True)
        if self.final_path.exists():
            shutil.rmtree(self.final_path)
        os.replace(self.partial_path, self.final_path)
        return TileStore(self.final_path, meta)  # zarr is opened only if the caller reads arrays


def create_tile_store(
    path: str | os.PathLike,
    *,
    coords: np.ndarray,
    tissue_fraction: np.ndarray,
    thumbnail: np.ndarray,
    tissue_mask: np.ndarray,
    tile_size: int,
    meta: dict,
    overwrite: bool = False,
    tiles_per_shard: int | None = None,
) -> StoreWriter:
    """Start, resume or recognise as done the store at ``path``.

    ``tiles_per_shard`` (the unit of work and of resumption) defaults to about 25 MB of pixels.
    ``meta`` is the provenance to record; with a ``labels`` entry (``names``, ``values``) the store
    gets ``masks`` and ``label_fractions``. Its ``params`` entry (a JSON dict) identifies the run:
    an existing or partial store with other ``params`` is refused (naming the difference) unless
    ``overwrite``. Returns a writer whose ``already_complete`` says whether there is nothing to do.
    """
    path = Path(path)
    params = meta["params"]
    n_tiles = int(len(coords))
    layout = {
        "tile_size": int(tile_size),
        "tiles_per_shard": int(tiles_per_shard or tiles_per_shard_for(tile_size)),
        "n_tiles": n_tiles,
    }
    full_meta = {**meta, **layout, "wsipipe_version": __version__, "complete": False}

    check_output_location(path)
    if path.exists():
        existing = _open_existing(path)  # never replace a directory that is not a wsipipe store
        if not overwrite:
            _refuse_other_params(path, existing.meta.get("params"), params)
            if existing.complete:
                # A stale partial beside a complete store (a second run that raced the first, before
                # runs took a lock) is never resumed: remove it.
                shutil.rmtree(_partial_path(path), ignore_errors=True)
                return StoreWriter(path, None)
    partial = _partial_path(path)
    if partial.exists():
        if overwrite:
            shutil.rmtree(partial)
        else:
            resumed = _open_existing(partial)
            _refuse_other_params(partial, resumed.meta.get("params"), params)
            return StoreWriter(path, resumed)
    return StoreWriter(path, _create(partial, full_meta, coords, tissue_fraction, thumbnail, tissue_mask))


def create_derived_store(
    source: TileStore,
    path: str | os.PathLike,
    *,
    stage: str,
    params: dict,
    extra_meta: dict | None = None,
    overwrite: bool = False,
) -> StoreWriter:
    """A store with ``source``'s coords, tissue fraction, thumbnail and mask and an empty ``tiles``.

    ``stage`` names what made it (e.g. ``"normalize"``); ``params`` are that stage's parameters,
    recorded with the source store's path and params so a resume from another source is refused.
    """
    meta = {
        **{k: v for k, v in source.meta.items() if k not in ("params", "complete")},
        **(extra_meta or {}),
        "stage": stage,
        "source_store": str(Path(source.path).resolve()),
        "params": {**params, "source": {"path": str(Path(source.path).resolve()), "params": source.meta["params"]}},
    }
    return create_tile_store(
        path,
        coords=source.coords[...],
        tissue_fraction=source.tissue_fraction[...],
        thumbnail=source.thumbnail,
        tissue_mask=source.tissue_mask,
        tile_size=source.tile_size,
        meta=meta,
        overwrite=overwrite,
        tiles_per_shard=source.tiles_per_shard,  # shard for shard with the source
    )


# --- internals ---------------------------------------------------------------------------------
def _partial_path(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL_SUFFIX)


def check_output_location(path: Path) -> None:
    """A store can be written at ``path``: its folder exists and is writable, and it is no file."""
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{path}: {parent} is not a directory")
    check_output_folder(path, parameter=None)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: the output directory {parent} is not writable")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is a file, not a store; remove it or choose another path")


def _open_existing(path: Path) -> TileStore:
    try:
        return open_tile_store(path, require_complete=False)
    except StoreError as exc:
        raise StoreError(f"{path}: exists and is not a wsipipe tile store; remove it or choose another path") from exc


def _refuse_other_params(path: Path, old: dict | None, new: dict) -> None:
    if old == new:
        return
    differences = _differences(old or {}, new)
    raise StoreError(
        f"{path}: made with other parameters ({'; '.join(differences[:4])}); "
        "use {overwrite} to replace it or choose another output",
        parameter="overwrite",
    )


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} was {a!r}, now {b!r}")
    return out


def _read_journal(partial: Path) -> set[int]:
    journal = partial / JOURNAL_NAME
    if not journal.exists():
        return set()
    done = set()
    for line in journal.read_text(encoding="ascii", errors="replace").splitlines():
        if line.strip().isdigit():  # a line cut short by a kill is simply redone
            done.add(int(line))
    return done


def _create(partial: Path, meta: dict, coords, tissue_fraction, thumbnail, tissue_mask) -> TileStore:
    """Write the store's metadata and small arrays directly, as zarr v3 JSON and chunk files
    exactly as zarr writes them (tested), without importing zarr."""
    tile_size, per_shard, n_tiles = meta["tile_size"], meta["tiles_per_shard"], meta["n_tiles"]
    tile = (tile_size, tile_size)
    try:
        partial.mkdir()
        _write_array_meta(
            partial / "tiles",
            (n_tiles, *tile, 3),
            np.uint8,
            (per_shard, *tile, 3),
            (1, *tile, 3),
            ("tile", "y", "x", "channel"),
        )
        _small_array(partial / "coords", np.asarray(coords, dtype=np.int64).reshape(n_tiles, 2))
        _small_array(partial / "tissue_fraction", np.asarray(tissue_fraction, dtype=np.float32).reshape(n_tiles))
        _small_array(partial / "thumbnail", np.asarray(thumbnail, dtype=np.uint8))
        _small_array(partial / "tissue_mask", np.asarray(tissue_mask, dtype=np.uint8))
        if "labels" in meta:
            n_labels = len(meta["labels"]["values"])
            _write_array_meta(
                partial / "masks", (n_tiles, *tile), np.uint8, (per_shard, *tile), (1, *tile), ("tile", "y", "x")
            )
            _write_array_meta(
                partial / "label_fractions",
                (n_tiles, n_labels),
                np.float32,
                (per_shard, max(1, n_labels)),
                dimension_names=("tile", "label"),
            )
        _write_group(partial, meta)
    except OSError as exc:
        raise OutputError(f"{partial}: cannot write the store ({exc.strerror or exc})") from exc
    return TileStore(partial, meta)


def _write_group(path: Path, meta: dict) -> None:
    _write_json(path / "zarr.json", {"attributes": {ATTRS_KEY: meta}, "zarr_format": 3, "node_type": "group"})


def _small_array(path: Path, data: np.ndarray) -> None:
    """An array in one chunk (none written when it is all fill value, as zarr does)."""
    _write_array_meta(path, data.shape, data.dtype, tuple(max(1, n) for n in data.shape))
    if data.size and data.any():
        chunk = path / "c" / "/".join("0" * data.ndim)
        chunk.parent.mkdir(parents=True, exist_ok=True)
        chunk.write_bytes(_compress(data))


def _write_array_meta(path: Path, shape, dtype, chunks, inner_chunks=None, dimension_names=None) -> None:
    """zarr v3 array metadata: Blosc-LZ4 chunks, sharded when ``inner_chunks`` is given."""
    dtype = np.dtype(dtype)
    endian = {} if dtype.itemsize == 1 else {"configuration": {"endian": "little"}}
    blosc = {
        "typesize": dtype.itemsize,
        "cname": BLOSC_CNAME,
        "clevel": BLOSC_CLEVEL,
        "shuffle": "noshuffle",
        "blocksize": 0,
    }
    codecs = [{"name": "bytes", **endian}, {"name": "blosc", "configuration": blosc}]
    if inner_chunks is not None:
        codecs = [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": list(inner_chunks),
                    "codecs": codecs,
                    "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
                    "index_location": "end",
                },
            }
        ]
    meta = {
        "shape": list(shape),
        "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0 if dtype.kind == "f" else 0,
        "codecs": codecs,
        "attributes": {},
        **({"dimension_names": list(dimension_names)} if dimension_names else {}),
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }
    path.mkdir()
    _write_json(path / "zarr.json", meta)


def _write_json(path: Path, data: dict) -> None:
    import json

    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False))
