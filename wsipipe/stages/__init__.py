"""The pipeline's stages as a Python API: for each, a config that checks itself, a ``run`` and a result.

    from wsipipe import stages
    result = stages.tile.run(stages.TileConfig(slide="a.svs", output="a.zarr"))
    print(result.n_tiles, result.to_json())

Each stage module (``tile``, ``normalize``, ``segment``, ``nuclei``, ``qc``) is the narrow public door to its
implementation; the CLI and ``batch`` build the same configs and read the same results.
``docs/api.md`` has a runnable example per stage.
"""

from __future__ import annotations

from wsipipe.stages import normalize, nuclei, qc, segment, tile
from wsipipe.stages.base import StageConfig, StageResult
from wsipipe.stages.normalize import NormalizeConfig, NormalizeResult
from wsipipe.stages.nuclei import NucleiConfig, NucleiResult
from wsipipe.stages.qc import QcConfig, QcResult
from wsipipe.stages.segment import SegmentConfig, SegmentResult
from wsipipe.stages.tile import TileConfig, TileResult

__all__ = [
    "NormalizeConfig",
    "NormalizeResult",
    "NucleiConfig",
    "NucleiResult",
    "QcConfig",
    "QcResult",
    "SegmentConfig",
    "SegmentResult",
    "StageConfig",
    "StageResult",
    "TileConfig",
    "TileResult",
    "normalize",
    "nuclei",
    "qc",
    "segment",
    "tile",
]
