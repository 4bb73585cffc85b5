"""Model files: one ``.safetensors`` file whose header metadata holds the wsipipe JSON.

Loading reads only the safetensors format (a JSON header and raw tensors), so a model file can
never run code; anything else (a pickle, a truncated file, a safetensors file written by another
tool) is refused with a ``ModelError`` naming the file.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsipipe.errors import ModelError
from wsipipe.files import atomic_path

FORMAT = "wsipipe-model/1"
METADATA_KEY = "wsipipe"
REQUIRED_KEYS = ("architecture", "args", "classes", "mpp", "tile_size", "input_normalisation")
IMAGENET_NORMALISATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@dataclass
class ModelBundle:
    """A ready network and what it needs to be run correctly."""

    model: Any  # torch.nn.Module, in eval mode
    metadata: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    @property
    def mpp(self) -> float:
        return float(self.metadata["mpp"])

    @property
    def tile_size(self) -> int:
        return int(self.metadata["tile_size"])

    @property
    def input_normalisation(self) -> dict[str, list[float]]:
        return self.metadata["input_normalisation"]

    def preprocess(self, pixels):
        """What the network takes for uint8 RGB tiles (NHWC, numpy or a tensor on any device):
        float32 NCHW in [0, 1], normalised by the model's own mean and std (``preprocess``)."""
        return preprocess(pixels, self.input_normalisation)


def preprocess(pixels, normalisation: dict):
    """uint8 RGB NHWC (numpy or a tensor, on its device) -> float32 NCHW ``(x / 255 - mean) / std``.

    The one place tiles become network inputs: inference (``wsipipe.inference.engine``), training
    and validation all call it, so a model sees at run time exactly what it was trained on.
    """
    import torch

    pixels = torch.as_tensor(pixels)
    mean, std = normalisation_tensors(normalisation, pixels.device)
    x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
    return (x - mean) / std


def normalisation_tensors(normalisation: dict, device=None):
    """(mean, std) of an input normalisation as (1, 3, 1, 1) tensors that broadcast over NCHW
    batches; made once per device (no host-to-device copy per batch)."""
    return _normalisation_tensors(tuple(normalisation["mean"]), tuple(normalisation["std"]), str(device or "cpu"))


@functools.lru_cache(maxsize=16)
def _normalisation_tensors(mean: tuple, std: tuple, device: str):
    import torch

    with torch.inference_mode(False):  # usable in training too, when first made during inference
        return tuple(
            torch.tensor(list(values), dtype=torch.float32, device=device).view(1, 3, 1, 1) for values in (mean, std)
        )


def model_metadata(
    architecture: str, args: dict, classes: list[str], mpp: float, tile_size: int, **extra: Any
) -> dict[str, Any]:
    """The metadata every model file carries; ``extra`` adds training/validation records."""
    from wsipipe import __version__

    meta = {
        "format": FORMAT,
        "architecture": architecture,
        "args": args,
        "classes": list(classes),
        "mpp": float(mpp),
        "tile_size": int(tile_size),
        "input_normalisation": IMAGENET_NORMALISATION,
        "stain_normalisation": {"method": "none", "target": None},
        "wsipipe_version": __version__,
    }
    meta.update(extra)
    return meta


def save_model(path: str | Path, model, metadata: dict[str, Any], half: bool = False) -> Path:
    """Write weights (fp16 when ``half``) and metadata; the file appears complete or not at all."""
    from safetensors.torch import save_file

    missing = [k for k in REQUIRED_KEYS if k not in metadata]
    if missing:
        raise ValueError(f"model metadata lacks {missing}")
    path = Path(path)
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        state[name] = tensor.half() if half and tensor.is_floating_point() else tensor
    meta = {**metadata, "format": FORMAT, "weights_dtype": "float16" if half else "float32"}
    with atomic_path(path) as temporary:
        save_file(state, str(temporary), metadata={METADATA_KEY: json.dumps(meta)})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # safetensors writes 0600; a model is shared like any output
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The wsipipe metadata of a model file, checked, without reading the weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for every malformed file
        raise ModelError(f"{path}: not a safetensors model file ({type(exc).__name__})") from None
    if METADATA_KEY not in header:
        raise ModelError(f"{path}: a safetensors file but not a wsipipe model (no '{METADATA_KEY}' metadata)")
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError:
        raise ModelError(f"{path}: wsipipe metadata is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{path}: unsupported model format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelError(f"{path}: model metadata lacks {', '.join(missing)}")
    return meta


def load_model(path: str | Path, device: str = "cpu") -> ModelBundle:
    """Rebuild the network from the metadata and load its weights (as float32) in eval mode."""
    from safetensors.torch import load_file

    from wsipipe.errors import InvalidInputError
    from wsipipe.models import build_model

    meta = read_metadata(path)
    try:
        model = build_model(meta["architecture"], len(meta["classes"]), meta["args"])
    except InvalidInputError as exc:
        raise ModelError(f"{path}: {exc}") from None
    try:
        state = load_file(str(path), device="cpu")
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelError(f"{path}: weights do not match {meta['architecture']} ({type(exc).__name__})") from None
    model.float().to(device).eval()
    return ModelBundle(model=model, metadata=meta)


def training_summary(metadata: dict[str, Any]) -> str | None:
    """One line on what a model was trained on and how it scored, from its metadata (None when the
    file records no training): for reports, which name the model a result came from."""
    data = (metadata.get("training") or {}).get("data") or {}
    if not data:
        return None
    items = data.get("images") or data.get("slides") or []
    kind = "slides" if data.get("slides") else "images"
    text = f"{len(items)} {kind} from {Path(str(data.get('dir', '?'))).name}"
    if data.get("data_mpp"):
        text += f" at {data['data_mpp']:g} µm/px"
    validation = metadata.get("validation") or {}
    if validation.get("miou") is not None:
        text += f"; mean IoU {validation['miou']:.3f} ({validation.get('method', 'validation')})"
    return text
