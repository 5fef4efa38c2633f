"""ExecuTorch (.pte) for Android, iOS and embedded Linux, from the checked torch.export capture.

The checked ExportedProgram (it matched eager on every check input) is lowered with
`to_edge_transform_and_lower` to the target's backends (XNNPACK for CPUs; the Core ML delegate for
iOS, which embeds a Core ML ML program in the .pte) and serialized by `to_executorch`. What no delegate
takes runs in ExecuTorch's portable CPU kernels: the delegation table (ops per delegate, and every op
that falls back) is in the requirements and the notes, since a fallback op on a phone is slow.

Checked here: an XNNPACK .pte runs in ExecuTorch's own runtime (its Python bindings). ExecuTorch runs the
Core ML delegate only on Apple platforms, so a Core ML-delegated .pte is read back, its embedded ML
programs extracted and evaluated by edgepack's Core ML reference executor (the smoke reason says so);
a plan that also needs portable kernels or another delegate is `skipped`, naming them.

Precisions: fp32; fp16 as the Core ML delegate's compute precision; int8-static and int8-dynamic
through the pt2e flow with the XNNPACK quantizer (quantize.py). The golden vectors also ship as a
BundledProgram (.bpte) that apps verify with ExecuTorch's bundled-program API.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import BuildError, RuntimeUnavailable, UsageError, did_you_mean
from ...noise import log_lines, quiet_converter, short_reason
from ...paths import scratch_folder
from ...targets import FormatSettings
from ..base import FLOAT_LAYERS, Calibration, Companion, Emitted, Format, NotConvertible, Runner, register_format
from . import bundled
from .lower import BACKEND_IDS, BACKENDS

if TYPE_CHECKING:
    from ...capture.ladder import CapturedModel

_INT8 = ("int8-dynamic", "int8-static")
# ExecuTorch plans memory for the largest size of a dynamic dimension: by default twice the example size
# (the largest size the capture was checked at); `dynamic_max = {SYMBOL = N}` in the target raises it.
_DEFAULT_GROWTH = 2


@register_format
class ExecuTorch(Format):
    name = "executorch"
    suffix = ".pte"
    precisions = ("fp32", "fp16", "int8-dynamic", "int8-static")
    libraries = ("executorch", "torchao")
    # Imported before a footprint probe's timed load: the runtime's Python bindings are the app's, not the model's.
    runtime_modules = (
        "torch",
        "executorch.runtime",
        "executorch.extension.pybindings.portable_lib",
        "edgepack.formats.executorch.program",
        "edgepack.formats.executorch.runtime",
    )
    loggers = ("executorch", "torchao", "coremltools")
    # The demo apps run a .pte when the bundle has one, but neither needs it (they keep their ONNX, Core ML and lite paths).
    app_platforms = ()
    option_defaults = {"backends": ["xnnpack"], "minimum_deployment_target": "iOS16", "dynamic_max": {}}

    def nearest_precision(self, requested: str) -> tuple[str, str]:
        if requested.startswith("palettize-"):
            return "int8-dynamic", f"{self.name} has no palettization; int8 (int8-dynamic, pt2e) instead"
        return super().nearest_precision(requested)

    def auto_precisions(self, settings: FormatSettings) -> tuple[str, ...]:
        """fp16 is the Core ML delegate's compute precision: an XNNPACK-only .pte has none; on the Core ML
        delegate both int8 schemes are the same int8 weights, built once."""
        coreml = "coreml" in self._backends(settings)
        return tuple(p for p in self.precisions if (p != "fp16" or coreml) and (p != "int8-static" or not coreml))

    def validate(self, settings: FormatSettings) -> None:
        super().validate(settings)
        backends = self.option(settings, "backends")
        if (
            not isinstance(backends, list)
            or not backends
            or len(set(backends)) != len(backends)
            or any(b not in BACKENDS for b in backends)
        ):
            bad = next((b for b in backends if b not in BACKENDS), backends) if isinstance(backends, list) else backends
            raise UsageError(
                f"ExecuTorch backends {backends!r} are not a list of known backends."
                f"{did_you_mean(str(bad), list(BACKENDS))}",
                f'Write backends = ["xnnpack"] (CPU), ["coreml"] (iOS) or ["coreml", "xnnpack"] '
                f"(Core ML first, XNNPACK for what it leaves); known: {', '.join(BACKENDS)}.",
            )
        target = self.option(settings, "minimum_deployment_target")
        if (
            not isinstance(target, str)
            or not target.startswith("iOS")
            or not target[3:].isdigit()
            or int(target[3:]) < 16
        ):
            raise UsageError(
                f"ExecuTorch minimum_deployment_target {target!r} is not supported.",
                'Write minimum_deployment_target = "iOS16" or newer (the Core ML delegate\'s ML programs).',
            )
        bounds = self.option(settings, "dynamic_max")
        if not isinstance(bounds, dict) or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in bounds.values()
        ):
            raise UsageError(
                f"ExecuTorch dynamic_max {bounds!r} must map dimension symbols to whole numbers.",
                "Write dynamic_max = { SEQ = 512 } (the largest size the app will pass).",
            )

    def _backends(self, settings: FormatSettings) -> list[str]:
        return list(self.option(settings, "backends"))

    # --- emit --------------------------------------------------------------------------------

    def emit(
        self, captured: CapturedModel, settings: FormatSettings, path: Path, calibration: Calibration | None = None
    ) -> Emitted:
        from . import lower, quantize
        from .program import read

        backends = self._backends(settings)
        precision = settings.precision
        if captured.exported is None:
            reason = captured.export.reason if captured.export is not None else "not attempted"
            raise NotConvertible(
                f"ExecuTorch is built only from a checked torch.export capture, and there is none "
                f"({reason}); `edgepack doctor` names the line and the fix"
            )
        if precision == "fp16" and "coreml" not in backends:
            raise BuildError(
                "fp16 for ExecuTorch is the Core ML delegate's compute precision; the XNNPACK .pte is "
                "built in fp32 or int8.",
                'Use backends = ["coreml"] for fp16, or build in fp32 or int8.',
            )
        declared = self._declared_bounds(captured, settings)
        strategy = captured.export.strategy if captured.export is not None else "export"
        program, notes = captured.exported_copy(), [f"lowered the checked torch.export capture ({strategy})"]
        with quiet_converter() as log:
            if precision in _INT8 and "coreml" in backends:
                notes.append(
                    "int8 on the Core ML delegate: int8 weights (linear, symmetric, per channel), activations "
                    "and compute in fp16; no calibration (pt2e's int8 ops do not convert to Core ML)"
                )
            elif precision in _INT8:
                example = tuple(captured.samples[0][name] for name in captured.input_names)
                samples = [tuple(s[name] for name in captured.input_names) for s in (calibration or [])]
                program, quant_notes = quantize.quantize(
                    program,
                    precision,
                    samples,
                    example,
                    self._dynamic_shapes(captured, declared),
                    list(settings.options.get(FLOAT_LAYERS, [])),
                )
                notes += quant_notes
            bounds = lower.symbol_bounds(program, declared)
            try:
                delegation, data = lower.lower(
                    program, backends, precision, self.option(settings, "minimum_deployment_target"), bounds
                )
            except Exception as exc:  # the lowering raises many types; say which step and why
                raise BuildError(
                    f"ExecuTorch lowering ({', '.join(backends)}) failed: {short_reason(exc, 400)}",
                    "\n".join(log_lines(log.getvalue()))[-600:]
                    or "An op or shape the backends cannot take: build with --allow-partial to ship the other "
                    "formats, or leave this backend out of the target's [formats.executorch] backends.",
                ) from exc
        path.write_bytes(data)
        saved = read(data)
        requirements: dict[str, Any] = {
            "runtime": "ExecuTorch (executorch-android on Android, the ExecuTorch Swift package on iOS, the C++ "
            "runtime elsewhere)",
            "backends": [BACKEND_IDS[b] for b in backends],
            "delegation": delegation.to_json(),
            # The portable kernels the runtime must be built with (what no delegate took); empty when all delegated.
            "operators": saved.kernels,
            "returns": "a list of tensors in the manifest's output order",
        }
        if declared:
            requirements["dynamic_dims"] = {
                symbol: {"min": 1, "max": bound} for symbol, bound in sorted(declared.values())
            }
            notes.append(
                "dynamic dimensions planned up to "
                + ", ".join(f"{s}={b}" for s, b in sorted(declared.values()))
                + " (larger inputs are refused by the runtime; raise dynamic_max in the target)"
            )
        if "coreml" in backends:
            requirements["coreml"] = {
                "minimum_deployment_target": self.option(settings, "minimum_deployment_target"),
                "compute_precision": lower.coreml_compute(precision),
            }
        notes.append(f"backends: {', '.join(backends)} ({precision})")
        notes += delegation.table()
        return Emitted(path, requirements, notes, capture="export")

    def _declared_bounds(
        self, captured: CapturedModel, settings: FormatSettings
    ) -> dict[tuple[int, int], tuple[str, int]]:
        """(input index, axis) -> (symbol, upper bound) for every declared dynamic dimension."""
        configured = self.option(settings, "dynamic_max")
        found = {}
        for index, spec in enumerate(captured.loaded.inputs):
            for axis, symbol in spec.dynamic_axes().items():
                found[(index, axis)] = (symbol, int(configured.get(symbol, spec.shape[axis] * _DEFAULT_GROWTH)))
        return found

    def _dynamic_shapes(self, captured: CapturedModel, declared: dict) -> tuple | None:
        """dynamic_shapes for exporting the quantized program again: the capture's Dims, bounded."""
        if not declared:
            return None
        import torch

        dims = {}
        for symbol, bound in declared.values():
            dims[symbol] = torch.export.Dim(symbol, min=1, max=bound)
        per_input = []
        for index in range(len(captured.loaded.inputs)):
            axes = {axis: dims[symbol] for (i, axis), (symbol, _) in declared.items() if i == index}
            per_input.append(axes or None)
        return (tuple(per_input),)

    def quantizable_layers(self, captured: CapturedModel, settings: FormatSettings) -> list[str]:
        if settings.precision not in _INT8 or captured.exported is None:
            return []
        from .quantize import quantizable_layers

        return quantizable_layers(captured.exported, settings.precision)

    # --- companions: the golden vectors as a BundledProgram ------------------------------------

    def add_companions(self, emitted: Emitted, captured: CapturedModel, settings: FormatSettings) -> None:
        bpte = emitted.path.with_suffix(bundled.SUFFIX)
        inputs = [[sample[name].numpy() for name in captured.input_names] for sample in captured.samples]
        cases = bundled.write(emitted.path, bpte, inputs, captured.expected)
        tolerance = settings.tolerance_for(settings.precision)
        # ExecuTorch compares element-wise with allclose; edgepack's rule is atol + rtol * max|expected|.
        atol = tolerance.atol + tolerance.rtol * max(
            float(abs(e).max()) for outputs in captured.expected for e in outputs
        )
        entry = {
            "path": bpte.name,
            "test_cases": cases,
            "atol": atol,
            "rtol": 0.0,
            "program_sha256": hashlib.sha256(emitted.path.read_bytes()).hexdigest(),
        }
        emitted.requirements["bundled_program"] = entry
        from .runtime import available_backends

        missing = sorted(set(emitted.requirements["backends"]) - available_backends())
        if missing:
            emitted.notes.append(
                f"bundled program: {cases} test case(s) in {bpte.name}, embedding the .pte byte for "
                f"byte; not run here ({', '.join(missing)} runs only on Apple platforms)"
            )
            return
        try:
            bundled.self_test(bpte, atol, 0.0)
        except Exception as exc:
            raise BuildError(
                f"ExecuTorch's bundled-program verification of {bpte.name} failed: {short_reason(exc, 300)}",
                "The .pte differs from eager PyTorch on a golden sample; see the smoke test.",
            ) from exc
        emitted.notes.append(
            f"bundled program: {cases} test case(s) in {bpte.name}, verified by ExecuTorch's "
            "bundled-program API (verify_result_with_bundled_expected_output)"
        )

    def companions(self, requirements: dict[str, Any]) -> list[Companion]:
        entry = requirements.get("bundled_program")
        return [Companion("bundled program", entry["path"], bundled.open_bundled)] if entry else []

    # --- reading back and running -----------------------------------------------------------

    def check_structure(self, emitted: Emitted, captured: CapturedModel, settings: FormatSettings) -> list[str]:
        from .program import read

        try:
            saved = read(emitted.path)
        except Exception as exc:
            return [f"cannot read the .pte back: {short_reason(exc, 200)}"]
        problems = []
        expected = emitted.requirements.get("backends", [])
        unknown = sorted(set(saved.delegates) - set(expected))
        if unknown:
            problems.append(f"the program calls delegate(s) {', '.join(unknown)}, not among the target's {expected}")
        if len(saved.inputs) != len(captured.input_names):
            problems.append(f"the program takes {len(saved.inputs)} inputs, expected {len(captured.input_names)}")
        if len(saved.outputs) != len(captured.output_names):
            problems.append(f"the program returns {len(saved.outputs)} outputs, expected {len(captured.output_names)}")
        if saved.kernels != emitted.requirements.get("operators"):
            problems.append("the portable operators in the program differ from the requirements")
        return problems

    def open(self, path: Path, threads: int) -> Runner:
        from .program import read
        from .runtime import available_backends, coreml_reference_runner, executorch_runner

        saved = read(path)
        missing = set(saved.delegates) - available_backends()
        self._last_opened = "reference" if missing == {"CoreMLBackend"} else "executorch"
        if missing == {"CoreMLBackend"}:
            return coreml_reference_runner(path)
        if missing:
            raise RuntimeUnavailable(f"ExecuTorch here has no {', '.join(sorted(missing))}")
        return executorch_runner(path, threads)

    def timed_here(self, settings: FormatSettings) -> bool:
        # A guess that needs no import of the runtime: its Linux and Windows builds carry no Core ML delegate.
        return "coreml" not in self.option(settings, "backends") or sys.platform == "darwin"

    def open_for_timing(self, path: Path, threads: int) -> Runner:
        from .program import read
        from .runtime import available_backends, executorch_runner

        missing = set(read(path).delegates) - available_backends()
        if missing:
            raise RuntimeUnavailable(f"ExecuTorch runs {', '.join(sorted(missing))} only on Apple platforms")
        return executorch_runner(path, threads)

    # How the artifact opened last was run (the smoke test asks right after opening it).
    _last_opened = "executorch"

    def verification_note(self) -> str:
        if self._last_opened == "reference":
            return (
                "numerics from edgepack's Core ML reference executor running the ML program(s) embedded in the "
                ".pte, not from ExecuTorch (its Core ML delegate runs only on Apple platforms)"
            )
        return "run in ExecuTorch's runtime (Python bindings)"

    def structure_check_description(self) -> str:
        return "program read back: delegates, inputs, outputs, portable operators"

    def weight_bytes(self, path: Path) -> int | None:
        # Constant tensors of the portable plan, the named data XNNPACK keeps its weights in, and the weight files
        # of the ML programs the Core ML delegate embedded.
        from .program import extract_coreml, read

        saved = read(path)
        constant = sum(len(buffer.storage) for buffer in saved.program.constant_buffer)
        coreml = 0
        with scratch_folder(prefix="edgepack-pte-weights-") as tmp:
            for i, backend in enumerate(saved.delegates):
                if backend == "CoreMLBackend":
                    package, _ = extract_coreml(saved.delegate_payload(i), Path(tmp) / str(i))
                    coreml += sum(
                        f.stat().st_size
                        for f in (package / "Data" / "com.apple.CoreML" / "weights").rglob("*")
                        if f.is_file()
                    )
        return constant + saved.named_data_bytes + coreml or None

    def converter_versions(self) -> dict[str, str]:
        from importlib import metadata

        versions = {}
        for library in ("torch", "executorch", "torchao", "coremltools"):
            try:
                versions[library] = metadata.version(library)
            except metadata.PackageNotFoundError:
                pass
        return versions
