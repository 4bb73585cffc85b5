"""``--device auto|cpu|cuda``: one place that turns the option into a ``torch.device``."""

from __future__ import annotations

from collections.abc import Callable

from wsipipe.errors import InvalidInputError


def resolve_device(name: str, notify: Callable[[str], None] | None = None):
    """The torch device for ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    ``auto`` takes CUDA when a GPU is visible and otherwise falls back to the CPU, calling
    ``notify`` with a one-line message so the user knows; ``cuda`` without a GPU is an error.
    """
    import torch

    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if notify is not None:
            notify("No CUDA GPU found; running on the CPU.")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InvalidInputError(
                f"{{device}} {name}: no CUDA GPU is available here (torch {torch.__version__}); "
                "use {device} cpu or {device} auto",
                parameter="device",
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidInputError(
                f"{{device}} {name}: only {torch.cuda.device_count()} CUDA device(s) visible", parameter="device"
            )
        return device
    raise InvalidInputError(f"{{device}} {name!r}: expected auto, cpu, cuda or cuda:N", parameter="device")
