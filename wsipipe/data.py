"""PyTorch datasets over tile stores (``wsipipe tile``): one item per tile, read lazily.

An item read touches only its own shard file: the tile's chunk (and its mask's) is read with one
``pread`` and Blosc-decoded, using the shard's chunk index, which each process keeps for the last
shard of each array (sequential reads parse each index once). zarr's array API would read the same
bytes but costs about 2 ms of machinery per call, several times the decoding of a tile; arrays not
laid out as ``store.ShardWriter`` writes them (a store rewritten by another tool) are read through
zarr, one item per call. The small per-tile arrays (coordinates, tissue and label fractions) are
held in memory. Nothing is open until a process (or thread) reads its first item and nothing open
is pickled, so ``DataLoader`` workers, forked or spawned, each open their own files.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch.utils.data

from wsipipe.errors import InvalidInputError, StoreError
from wsipipe.store import open_tile_store

_ABSENT = np.iinfo(np.uint64).max  # a shard index's offset for a chunk left out (all fill value)


class TileStoreDataset(torch.utils.data.Dataset):
    """The tiles of one store, one item per tile (those with a tissue fraction >= ``min_tissue``).

    An item is a dict: ``image`` (T, T, 3) uint8, ``coords`` (2,) int64 level-0 x, y of the tile's
    top-left corner, ``tissue_fraction``, ``slide`` (``name``, by default the slide's file name
    without its suffix), ``index`` (the tile's row in the store); for a store tiled with
    annotations also ``label_fractions`` (L,) float32 (columns in the order of ``label_names``) and,
    unless ``masks`` is False, ``mask`` (T, T) uint8 label values. ``transform``, when given, is
    called with that dict and what it returns is the item (it may change image and mask together).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        transform: Callable[[dict], object] | None = None,
        masks: bool = True,
        min_tissue: float = 0.0,
        name: str | None = None,
    ):
        if not 0.0 <= min_tissue <= 1.0:
            raise InvalidInputError(f"min_tissue must be between 0 and 1, got {min_tissue}")
        store = open_tile_store(path)
        meta = store.meta
        self.path = store.path.absolute()  # a worker may start in another folder
        self.slide = name or _slide_name(meta, store.path)
        self.tile_size = store.tile_size
        self.mpp = store.mpp
        labels = meta.get("labels")
        #: The annotations' label names and the values masks hold for them (None without annotations).
        self.label_names: list[str] | None = None if labels is None else list(labels["names"])
        self.label_values: list[int] | None = None if labels is None else list(labels["values"])
        self.transform = transform
        self.coords = np.asarray(store.coords[...])
        self.tissue_fraction = np.asarray(store.tissue_fraction[...])
        self.label_fractions = None if self.label_names is None else np.asarray(store.label_fractions[...])
        #: The store rows this dataset's items are, in order.
        self.indices = np.flatnonzero(self.tissue_fraction >= min_tissue)
        self._arrays = ("tiles", "masks") if self.label_names is not None and masks else ("tiles",)
        self._local: threading.local | None = None  # each process's and thread's readers, opened on first use
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} of {len(self)}")
        index = int(self.indices[i])
        readers = self._open()
        item = {
            "image": readers["tiles"].read(index),
            "coords": self.coords[index].copy(),
            "tissue_fraction": float(self.tissue_fraction[index]),
            "slide": self.slide,
            "index": index,
        }
        if "masks" in readers:
            item["mask"] = readers["masks"].read(index)
        if self.label_fractions is not None:
            item["label_fractions"] = self.label_fractions[index].copy()
        return item if self.transform is None else self.transform(item)

    def _open(self) -> dict:
        """This thread's readers (a forked worker inherits its parent's: it opens its own)."""
        if self._local is None or self._pid != os.getpid():
            self._local, self._pid = threading.local(), os.getpid()
        readers = getattr(self._local, "readers", None)
        if readers is None:
            readers = self._local.readers = {name: _item_reader(self.path / name) for name in self._arrays}
        return readers

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_local": None, "_pid": None}


class TileStoresDataset(torch.utils.data.ConcatDataset):
    """Several stores as one dataset, in the order given, each item naming its slide.

    The stores must agree on tile size, µm/px and labels (a batch mixing scales, or label
    fractions whose columns mean different labels, would train on nonsense); ``names`` overrides
    the slide names, one per store. The other arguments are ``TileStoreDataset``'s.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        names: Sequence[str] | None = None,
        transform: Callable[[dict], object] | None = None,
        masks: bool = True,
        min_tissue: float = 0.0,
    ):
        paths = list(paths)
        if not paths:
            raise InvalidInputError("paths: no tile stores given")
        if names is not None and len(names) != len(paths):
            raise InvalidInputError(f"names: {len(names)} names for {len(paths)} stores")
        datasets = [
            TileStoreDataset(
                path, transform=transform, masks=masks, min_tissue=min_tissue, name=None if names is None else names[k]
            )
            for k, path in enumerate(paths)
        ]
        first = datasets[0]
        agree = (
            ("tile size", "tile_size"),
            ("µm/px", "mpp"),
            ("labels", "label_names"),
            ("label values", "label_values"),
        )
        for dataset in datasets[1:]:
            for what, attribute in agree:
                theirs, ours = getattr(dataset, attribute), getattr(first, attribute)
                if theirs != ours:
                    raise InvalidInputError(
                        f"paths: {dataset.path} has {what} {theirs}, {first.path} {ours}: tile the stores alike"
                    )
        super().__init__(datasets)
        self.slides = [dataset.slide for dataset in datasets]


def _slide_name(meta: dict, store_path: Path) -> str:
    """The tiled slide's file name without its suffix (the store's, for a store without provenance)."""
    slide = meta.get("slide", {}).get("path")
    return Path(slide).stem if slide else store_path.stem


def _item_reader(array_dir: Path):
    """What reads the array's items one by one (``.read(index)``): straight from the shard files
    when the array is laid out as wsipipe writes it, else through zarr."""
    with open(array_dir / "zarr.json", encoding="utf-8") as handle:
        meta = json.load(handle)
    if _one_chunk_per_item_shards(meta):
        return _ShardChunks(array_dir, meta)
    return _ZarrItems(array_dir)


def _one_chunk_per_item_shards(meta: dict) -> bool:
    """The array is laid out as ``store.ShardWriter`` writes: shards along the first axis only,
    one Blosc-compressed chunk per item, the chunk index (with its CRC32C) at the end."""
    shape, codecs = meta["shape"], meta["codecs"]
    if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
        return False
    sharding = codecs[0]["configuration"]
    inner = sharding["codecs"]
    little_endian = (
        np.dtype(meta["data_type"]).itemsize == 1 or inner[0].get("configuration", {}).get("endian") == "little"
    )
    return (
        meta["chunk_grid"]["configuration"]["chunk_shape"][1:] == shape[1:]
        and meta["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}}
        and sharding["chunk_shape"] == [1, *shape[1:]]
        and [codec["name"] for codec in inner] == ["bytes", "blosc"]
        and little_endian
        and [codec["name"] for codec in sharding["index_codecs"]] == ["bytes", "crc32c"]
        and sharding.get("index_location", "end") == "end"
    )


class _ShardChunks:
    """One item at a time from a sharded array's files; the last shard's file and index kept open."""

    def __init__(self, array_dir: Path, meta: dict):
        self.array_dir = array_dir
        self.item_shape = tuple(meta["shape"][1:])
        self.dtype = np.dtype(meta["data_type"])
        self.per_shard = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        self._shard: int | None = None
        self._file: BinaryIO | None = None  # None also when the shard has no file
        self._index = np.full((self.per_shard, 2), _ABSENT, np.uint64)

    def read(self, index: int) -> np.ndarray:
        shard, position = divmod(index, self.per_shard)
        if shard != self._shard:
            self._load(shard)
        offset, nbytes = (int(v) for v in self._index[position])
        if offset == _ABSENT or self._file is None:
            return np.zeros(self.item_shape, self.dtype)
        import imagecodecs

        out = np.empty(self.item_shape, self.dtype)
        data = os.pread(self._file.fileno(), nbytes, offset)
        imagecodecs.blosc_decode(data, out=out.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        return out

    def _load(self, shard: int) -> None:
        import google_crc32c

        if self._file is not None:
            self._file.close()
        self._file, self._shard = None, None
        path = self.array_dir / "c" / str(shard) / "/".join("0" * len(self.item_shape))
        index_bytes = self.per_shard * 16
        try:
            file = open(path, "rb")  # noqa: SIM115 - kept open for the next items of this shard
        except FileNotFoundError:  # a shard whose chunks are all fill value need not exist
            self._index, self._shard = np.full((self.per_shard, 2), _ABSENT, np.uint64), shard
            return
        size = os.fstat(file.fileno()).st_size
        raw = os.pread(file.fileno(), index_bytes + 4, size - index_bytes - 4) if size >= index_bytes + 4 else b""
        if len(raw) != index_bytes + 4 or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            file.close()
            raise StoreError(f"{path}: damaged shard (its chunk index fails its checksum)")
        self._file, self._shard = file, shard
        self._index = np.frombuffer(raw[:-4], "<u8").reshape(self.per_shard, 2)


class _ZarrItems:
    """One item at a time through zarr, for arrays laid out otherwise."""

    def __init__(self, array_dir: Path):
        import zarr

        self._array = zarr.open_array(store=str(array_dir), mode="r")

    def read(self, index: int) -> np.ndarray:
        return np.asarray(self._array[index])
