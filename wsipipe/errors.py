"""User-facing failures.

Every failure a user can cause (bad path, bad option, corrupt file) is a ``WsipipeError``
subclass; the CLI turns it into one line on stderr and its ``exit_code``. Anything else is a
bug and keeps its traceback (shown with ``--debug``).
"""


class WsipipeError(Exception):
    """A failure caused by the input or environment, reported as one line."""

    exit_code = 1


class InvalidInputError(WsipipeError):
    """An option value or argument that can never work (a usage error)."""

    exit_code = 2


class SlideOpenError(WsipipeError):
    """A file that does not exist, is not readable, or is not a supported slide."""


class MppUnknownError(WsipipeError):
    """The slide's µm/px is unknown and the operation needs it."""

    def __init__(self, path: str):
        super().__init__(
            f"{path}: the slide records no µm/px; pass --mpp-override X (µm per pixel at level 0)"
        )


class StoreError(WsipipeError):
    """A zarr store that is incomplete, made with other parameters, or not a wsipipe store."""


class AnnotationError(WsipipeError):
    """An annotation file that cannot be read."""


class ModelError(WsipipeError):
    """A model file that is missing, corrupt or not a wsipipe model."""


class OutputError(WsipipeError):
    """An output location that cannot be written."""


class StainError(InvalidInputError):
    """An image or tile set from which stains cannot be estimated (no tissue, not RGB colour)."""


class SlidesFailedError(WsipipeError):
    """A batch finished with some slides failed (the others are done)."""


class DeviceError(WsipipeError):
    """The compute device failed in a way a smaller batch cannot help (CUDA out of memory at one tile)."""


class NotBrightfieldHEError(InvalidInputError):
    """A slide quality control finds not to be brightfield H&E, refused by an H&E stage."""
