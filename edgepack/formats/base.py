"""What every deployment format provides: emit an artifact, describe what runs it, and open it to run."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..capture.ladder import CapturedModel
from ..errors import UsageError, did_you_mean
from ..capture.devices import DeviceFindings
from ..targets import FormatSettings

# Runs one sample: input arrays in the model's input order -> output arrays in its output order.
Runner = Callable[[list[np.ndarray]], list[np.ndarray]]

# Every precision name a target file or `--precision` may ask for. A format implements some of
# them (`Format.precisions`) and maps the rest to its nearest scheme (`Format.nearest_precision`).
PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static", "palettize-4", "palettize-6", "palettize-8")
# Calibration data for static schemes: samples shaped like CapturedModel.samples (input name -> tensor).
Calibration = list[dict[str, torch.Tensor]]
# FormatSettings.options key: layer names (from `quantizable_layers`) that a quantized emit keeps in float.
FLOAT_LAYERS = "float_layers"


class RuntimeUnavailable(Exception):
    """The artifact's runtime cannot run on this machine (Core ML prediction off macOS)."""


@dataclass
class Emitted:
    """An artifact written into the bundle, with what a device needs to run it."""

    path: Path
    requirements: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    # The capture the artifact was converted from: "export" (the checked ExportedProgram) or "torchscript".
    capture: str = "torchscript"


class Format(ABC):
    """One deployment format. Subclasses register themselves with @register_format."""

    name: ClassVar[str]
    suffix: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    # The precisions whose emit needs calibration samples (activation ranges); weight-only schemes need none.
    calibrated_precisions: ClassVar[tuple[str, ...]] = ()
    # Option keys a target may set in [formats.<name>], with their defaults.
    option_defaults: ClassVar[dict[str, Any]] = {}

    def validate(self, settings: FormatSettings) -> None:
        """Reject settings this format cannot honour, before any work starts."""
        if settings.precision not in PRECISIONS:
            raise UsageError(
                f"Unknown precision '{settings.precision}' for format '{self.name}'.{did_you_mean(settings.precision, list(PRECISIONS))}",
                f"Precisions: {', '.join(PRECISIONS)} ({self.name} implements {', '.join(self.precisions)}; "
                "it builds the others in its nearest scheme and the report says so).",
            )

    def option(self, settings: FormatSettings, key: str) -> Any:
        return settings.options.get(key, self.option_defaults[key])

    def artifact_path(self, bundle_dir: Path, model_name: str) -> Path:
        return bundle_dir / f"{model_name}{self.suffix}"

    @abstractmethod
    def emit(self, captured: CapturedModel, settings: FormatSettings, path: Path,
             calibration: Calibration | None = None) -> Emitted:
        """Write the artifact at `path` in `settings.precision`, keeping `settings.options[FLOAT_LAYERS]`
        in float; raise BuildError with the converter's reason on failure. Static schemes need
        `calibration` (UsageError when it is missing)."""

    def nearest_precision(self, requested: str) -> tuple[str, str]:
        """The scheme this format uses for a requested precision, and a note when it differs."""
        if requested in self.precisions:
            return requested, ""
        return "fp32", f"{self.name} has no {requested} scheme; built in fp32"

    def quantizable_layers(self, captured: CapturedModel, settings: FormatSettings) -> list[str]:
        """Layer names a quantized emit can keep in float (what the sensitivity pass chooses from)."""
        return []

    def add_companions(self, emitted: Emitted, captured: CapturedModel, settings: FormatSettings) -> None:
        """Write files derived from the artifact as it ships (after the precision ladder chose it) beside
        it in the bundle, recording them in `emitted.requirements`; `settings.precision` is the shipped one."""

    def check_structure(self, emitted: Emitted, captured: CapturedModel, settings: FormatSettings) -> list[str]:
        """Problems found by reading the saved artifact back without running it."""
        return []

    @abstractmethod
    def open(self, path: Path, threads: int) -> Runner:
        """Load the saved artifact in its real runtime; RuntimeUnavailable when it cannot run here."""

    def open_for_timing(self, path: Path, threads: int) -> Runner:
        """The runner to time: the real runtime only, never a stand-in used for checking numerics."""
        return self.open(path, threads)

    def weight_bytes(self, path: Path) -> int | None:
        """Bytes of weight data in the saved artifact (what quantization shrinks); the rest of its size is
        the format's code, graph and names. None when the format cannot tell them apart."""
        return None

    def saved_devices(self, path: Path, keep: set[str]) -> DeviceFindings | None:
        """Device literals left in the saved artifact's code; None when the format records no device
        placement at all (ONNX and Core ML programs leave placement to their runtime)."""
        return None

    def verification_note(self) -> str:
        """How the numerics were checked, when not in the format's own runtime."""
        return ""

    @abstractmethod
    def converter_versions(self) -> dict[str, str]:
        """Versions of the libraries that wrote and run this format, for the manifest."""


FORMATS: dict[str, Format] = {}


def register_format(cls: type[Format]) -> type[Format]:
    FORMATS[cls.name] = cls()
    return cls


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise UsageError(f"Unknown format '{name}'.{did_you_mean(name, list(FORMATS))}", f"Known formats: {', '.join(FORMATS)}.")
    return FORMATS[name]
