"""Typed errors. Each names the file it is about and says what to do where there is a fix.

A per-slide error fails that slide's job only; Snakemake's ``--keep-going`` lets the rest of
the cohort finish. The command line turns these into one clear log line and exit status 1.
"""

from __future__ import annotations

from pathlib import Path


class HespotexError(Exception):
    """Base of every error the pipeline raises on purpose."""


class SlidesFailedError(HespotexError):
    """Some of the slides a command was given failed; each was logged with its cause."""


class ConfigError(HespotexError):
    """A configuration value or sample-sheet row is invalid; raised before any work starts."""


class SlideError(HespotexError):
    """A problem with one slide file. The message starts with the file's path."""

    def __init__(self, path: Path | str, cause: str):
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"{path}: {cause}")

    def about(self, source: str) -> SlideError:
        """The same error naming ``source`` (a slide's URL) instead of the file read."""
        renamed = type(self).__new__(type(self))  # not __init__: the subclasses' differ
        renamed.__dict__.update(self.__dict__)
        renamed.args = (f"{source}: {self.cause}",)
        return renamed


class SlideOpenError(SlideError):
    """The file is missing, not a slide, or no reader can open it."""


class SlideReadError(SlideError):
    """The slide opened but a region could not be decoded (truncated or corrupt data)."""


class MissingMppError(SlideError):
    """Neither the slide's metadata nor the sample sheet gives the resolution."""

    def __init__(self, path: Path | str, slide_id: str):
        super().__init__(
            path,
            "the slide has no resolution (µm per pixel) in its metadata; add an `mpp` column "
            f"to the sample sheet and give slide '{slide_id}' its µm per pixel there "
            "(e.g. 0.25 for 40x, 0.5 for 20x scans)",
        )


class InvalidMppError(SlideError):
    """A resolution outside (0, 100] µm/px: a unit mistake, not a microscope."""


class EncoderMemoryError(SlideError):
    """The encoder does not fit the device's memory even one patch at a time."""


class ResolutionTooCoarseError(SlideError):
    """The slide's finest level is much coarser than the patches asked for."""


class NoTissueError(SlideError):
    """Tissue detection or spot placement found nothing to predict on."""


class NotBrightfieldError(NoTissueError):
    """The slide is not a brightfield H&E scan (e.g. fluorescence)."""


class WrongStainError(SlideError):
    """The slide's tissue does not look like H&E (IHC's DAB, another stain): its colour
    measurements are in the message."""


class SlideQualityError(SlideError):
    """The slide's tissue is mostly under ink, folded or out of focus: the measured shares are
    in the message."""


class SlideTooSmallError(NoTissueError):
    """The whole slide is smaller than one patch."""


class InputDataError(HespotexError):
    """A training section, feature store or other input file is malformed."""

    def __init__(self, path: Path | str, cause: str):
        self.path = Path(path)
        super().__init__(f"{path}: {cause}")


class OutputWriteError(HespotexError):
    """An output could not be written (disk full, permissions); nothing partial is left."""

    def __init__(self, path: Path | str, cause: str):
        self.path = Path(path)
        super().__init__(f"{path}: cannot write it: {cause}")


class CheckpointError(InputDataError):
    """A checkpoint is unreadable, incompatible or unsafe."""


class EncoderMismatchError(InputDataError):
    """A checkpoint, ONNX model or feature store was made with another encoder (or other
    weights) than the one it is used with."""


class StainMismatchError(EncoderMismatchError):
    """Features were made with another stain normalisation (method or target) than the
    checkpoint they are decoded with was trained on."""
