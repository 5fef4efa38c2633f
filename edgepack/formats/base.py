"""What every deployment format provides: emit an artifact, describe what runs it, and open it to run."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .. import precisions
from ..compare import Runner
from ..errors import UsageError, did_you_mean
from ..noise import quiet_loggers
from ..targets import FormatSettings

if TYPE_CHECKING:  # the contract is read without torch by `edgepack verify` and `inspect`
    import torch

    from ..capture.devices import DeviceFindings
    from ..capture.ladder import CapturedModel


# Calibration data for static schemes: samples shaped like CapturedModel.samples (input name -> tensor).
Calibration = list[dict[str, "torch.Tensor"]]
# The file in a format's folder holding the JSON Schema of its manifest `requirements`.
REQUIREMENTS_SCHEMA = "requirements.schema.json"
# FormatSettings.options key: layer names (from `quantizable_layers`) that a quantized emit keeps in float.
FLOAT_LAYERS = "float_layers"


class NotConvertible(Exception):
    """Raised by `emit` when the format cannot be built from what the capture produced at all (a format built
    only on torch.export, and no checked export capture): the artifact is left out of the bundle and reported
    `skipped` with the reason, like an artifact whose runtime cannot run here (--strict counts it as a failure);
    the target's other formats ship."""


@dataclass(frozen=True)
class Companion:
    """A file shipped beside an artifact that its own runtime loads too (ONNX's .ort): checked like the artifact."""

    label: str  # how checks name it: "ort"
    path: str  # relative to the bundle
    open: Callable[[Path, int], Runner]  # (path, threads) -> runner


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
    # The names of edgepack/precisions.py this format implements; it maps the others to its nearest scheme.
    precisions: ClassVar[tuple[str, ...]]
    # Modules a fresh process imports before a footprint probe times the artifact's load and first run.
    runtime_modules: ClassVar[tuple[str, ...]] = ("torch",)
    # Precisions whose kernels are tuned for the devices' ARM CPUs (qnnpack): their timings on another
    # architecture say nothing about the device, so `--precision auto` does not rank them by host timings.
    arm_tuned_precisions: ClassVar[tuple[str, ...]] = ()
    # Option keys a target may set in [formats.<name>], with their defaults.
    option_defaults: ClassVar[dict[str, Any]] = {}
    # The Python distributions that write and run this format, recorded in every manifest's provenance.
    libraries: ClassVar[tuple[str, ...]] = ()
    # The demo apps (`edgepack install-into`) that cannot run without this format: "android", "ios".
    app_platforms: ClassVar[tuple[str, ...]] = ()
    # The converter's loggers, kept quiet below ERROR while it converts (noise.quiet_converter).
    loggers: ClassVar[tuple[str, ...]] = ()

    @property
    def calibrated_precisions(self) -> tuple[str, ...]:
        """The precisions whose emit needs calibration samples (activation ranges), per the precision table;
        a format whose scheme of that name is weight-only overrides this."""
        return tuple(p for p in self.precisions if (entry := precisions.get(p)) is not None and entry.calibrated)

    def validate(self, settings: FormatSettings) -> None:
        """Reject settings this format cannot honour, before any work starts."""
        known = precisions.names()
        if settings.precision != precisions.AUTO and settings.precision not in known:
            raise UsageError(
                f"Unknown precision '{settings.precision}' for format '{self.name}'.{did_you_mean(settings.precision, known)}",
                f"Precisions: {', '.join(known)}, auto ({self.name} implements {', '.join(self.precisions)}; "
                "it builds the others in its nearest scheme and the report says so).",
            )

    def option(self, settings: FormatSettings, key: str) -> Any:
        return settings.options.get(key, self.option_defaults[key])

    def artifact_path(self, bundle_dir: Path, model_name: str) -> Path:
        return bundle_dir / f"{model_name}{self.suffix}"

    @abstractmethod
    def emit(
        self, captured: CapturedModel, settings: FormatSettings, path: Path, calibration: Calibration | None = None
    ) -> Emitted:
        """Write the artifact at `path` in `settings.precision`, keeping `settings.options[FLOAT_LAYERS]`
        in float; raise BuildError with the converter's reason on failure. Static schemes need
        `calibration` (UsageError when it is missing)."""

    def nearest_precision(self, requested: str) -> tuple[str, str]:
        """The scheme this format uses for a requested precision, and a note when it differs."""
        if requested in self.precisions:
            return requested, ""
        return "fp32", f"{self.name} has no {requested} scheme; built in fp32"

    def auto_precisions(self, settings: FormatSettings) -> tuple[str, ...]:
        """The schemes `--precision auto` tries with these settings: the ones this format's runtime really
        computes in (a format overrides this where a scheme depends on its options)."""
        return self.precisions

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

    def timed_here(self, settings: FormatSettings) -> bool:
        """Whether this machine can time what `settings` builds (and so probe its cold start): a guess made before
        it is built, used only to start work ahead; `open_for_timing` decides."""
        return True

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

    def structure_check_description(self) -> str:
        """What `check_structure` reads back, for the smoke reason of an artifact whose numerics cannot run here."""
        return ""

    def stabilize(self, path: Path) -> list[str]:
        """Rewrite what the converter writes nondeterministically (ids, dates, call stacks) in place, before the
        artifact is hashed; return notes saying what changed. Formats whose converter is stable keep this."""
        return []

    def requirements_schema(self) -> dict[str, Any]:
        """The JSON Schema of this format's `requirements` in manifest.json: `requirements.schema.json` beside the
        format's module when it ships one, else `runtime` alone. Closed, so a misspelled key fails `verify`."""
        package = type(self).__module__.rpartition(".")[0]
        try:
            text = resources.files(package).joinpath(REQUIREMENTS_SCHEMA).read_text(encoding="utf-8")
        except (FileNotFoundError, ModuleNotFoundError, TypeError):
            return {
                "type": "object",
                "additionalProperties": False,
                "required": ["runtime"],
                "properties": {"runtime": {"type": "string"}},
            }
        return json.loads(text)

    def companions(self, requirements: dict[str, Any]) -> list[Companion]:
        """Files beside the artifact, named in its requirements, that `edgepack verify` checks in their runtime."""
        return []

    @abstractmethod
    def converter_versions(self) -> dict[str, str]:
        """Versions of the libraries that wrote and run this format, for the manifest."""


FORMATS: dict[str, Format] = {}


def register_format(cls: type[Format]) -> type[Format]:
    FORMATS[cls.name] = cls()
    quiet_loggers(cls.loggers)
    return cls


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise UsageError(
            f"Unknown format '{name}'.{did_you_mean(name, list(FORMATS))}", f"Known formats: {', '.join(FORMATS)}."
        )
    return FORMATS[name]
