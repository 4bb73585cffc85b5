"""User-facing failures.

Every failure a user can cause (bad path, bad option, corrupt file) is a ``WsipipeError``
subclass; the CLI turns it into one line on stderr and its ``exit_code``. Anything else is a
bug and keeps its traceback (shown with ``--debug``).

Exit codes, one rule for every command: 2 when the inputs or options can never work (a missing,
unreadable or unsupported file, a bad option value, an output location that cannot be used); 1
when a run fails while working (no space left, another run holds the folder, slides failed in a
batch, a bug); 130 when interrupted.

An error about a parameter names it in its message as a ``{name}`` placeholder (``parameter=``):
``str(error)`` shows the Python name ("overlap 300: ..."), the CLI its flag ("--overlap 300: ...").
"""

from __future__ import annotations

from collections.abc import Mapping


class WsipipeError(Exception):
    """A failure caused by the input or environment, reported as one line."""

    exit_code = 1

    def __init__(self, message: str = "", *, parameter: str | tuple[str, ...] | None = None):
        """``parameter``: the parameter the error is about (first) and any others ``message`` names,
        each written ``{name}`` in it."""
        self.template = message
        self.parameters = (parameter,) if isinstance(parameter, str) else tuple(parameter or ())
        super().__init__(self.text())

    @property
    def parameter(self) -> str | None:
        """The parameter the error is about, if any."""
        return self.parameters[0] if self.parameters else None

    def text(self, spellings: Mapping[str, str] | None = None) -> str:
        """The message with each parameter as ``spellings`` writes it (a CLI: its flag), else by name."""
        text = self.template
        for name in self.parameters:
            text = text.replace("{" + name + "}", (spellings or {}).get(name, name))
        return text

    def __reduce__(self):
        """Pickled whole (a Dask worker's error reaches the batch), whatever the subclass's arguments."""
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[WsipipeError], args: tuple, state: dict) -> WsipipeError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class InvalidInputError(WsipipeError):
    """An option value or argument that can never work (a usage error)."""

    exit_code = 2


class SlideOpenError(WsipipeError):
    """A file that does not exist, is not readable, or is not a supported slide."""

    exit_code = 2


class MppUnknownError(WsipipeError):
    """The slide's µm/px is unknown and the operation needs it."""

    exit_code = 2

    def __init__(self, path: str, level_option: bool = False):
        """``level_option``: the command also takes ``--level N``, which needs no µm/px."""
        self.path = path
        remedy = "pass {mpp_override} X (µm per pixel at level 0)"
        if level_option:
            remedy += " or {level} N (tile a pyramid level at its own scale)"
        super().__init__(
            f"{path}: the slide records no µm/px; {remedy}",
            parameter=("mpp_override", "level") if level_option else "mpp_override",
        )


class StoreError(WsipipeError):
    """A zarr store that is incomplete, made with other parameters, or not a wsipipe store."""

    exit_code = 2


class AnnotationError(WsipipeError):
    """An annotation file that cannot be read."""

    exit_code = 2


class ModelError(WsipipeError):
    """A model file that is missing, corrupt or not a wsipipe model."""

    exit_code = 2


class OutputError(WsipipeError):
    """An output location that cannot be written."""

    exit_code = 2


class FolderBusyError(OutputError):
    """Another wsipipe run holds the output folder (it may be free later: a run-time failure)."""

    exit_code = 1


class DiskFullError(WsipipeError):
    """The device ran out of space (or quota) while an output was written."""

    def __init__(self, path: str | None):
        super().__init__(f"no space left on device while writing {path or 'the outputs'}")


class StainError(InvalidInputError):
    """An image or tile set from which stains cannot be estimated (no tissue, not RGB colour)."""


class SlidesFailedError(WsipipeError):
    """A batch finished with some slides failed (the others are done)."""


class DeviceError(WsipipeError):
    """The compute device failed in a way a smaller batch cannot help (CUDA out of memory at one tile)."""


class NotBrightfieldHEError(InvalidInputError):
    """A slide quality control finds not to be brightfield H&E, refused by an H&E stage."""
