"""Core ML (.mlpackage, ML program) for iOS and macOS apps.

Core ML prediction only runs on macOS. Elsewhere the saved package is read back, checked for
structure (spec version, inputs, outputs, weights), and its ML program is evaluated by edgepack's
NumPy reference executor (edgepack.coreml_executor); a program with an op the executor lacks is
reported as not verified, never as passed. Latency is only measured on macOS.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..capture import CapturedModel
from ..coreml_executor import UnsupportedOp, program_op_types, run_package, unsupported_ops
from ..errors import BuildError, UsageError
from ..noise import quiet_converter, tail
from ..targets import FormatSettings
from .base import Calibration, Emitted, Format, Runner, RuntimeUnavailable, register_format

_PRECISIONS = {"fp16": "FLOAT16", "fp32": "FLOAT32"}
# Core ML model inputs are fp16/fp32/fp64/int32 multi-arrays: int64 token ids travel as int32.
_INPUT_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int32, "int32": np.int32}


def _ct() -> Any:
    """coremltools, imported quietly: on Linux its import logs missing native libraries."""
    with quiet_converter():
        import coremltools

    return coremltools


@register_format
class CoreML(Format):
    name = "coreml"
    suffix = ".mlpackage"
    precisions = tuple(_PRECISIONS)
    option_defaults = {"minimum_deployment_target": "iOS16"}

    def validate(self, settings: FormatSettings) -> None:
        super().validate(settings)
        known = [t.name for t in _ct().target if t.name.startswith("iOS") and t.value >= 7]
        target = self.option(settings, "minimum_deployment_target")
        if target not in known:
            raise UsageError(f"Core ML minimum_deployment_target '{target}' is not supported.",
                             f"Choose one of {', '.join(known)} (ML programs with fp16 I/O need iOS16 or newer).")

    def emit(self, captured: CapturedModel, settings: FormatSettings, path: Path,
             calibration: Calibration | None = None) -> Emitted:
        ct = _ct()
        deployment = getattr(ct.target, self.option(settings, "minimum_deployment_target"))
        with quiet_converter() as log:
            try:
                mlmodel = ct.convert(
                    captured.scripted,
                    inputs=[_input_type(ct, spec) for spec in captured.loaded.inputs],
                    outputs=[_output_type(ct, name, tensor) for name, tensor in zip(captured.output_names, captured.expected[0])],
                    convert_to="mlprogram",
                    minimum_deployment_target=deployment,
                    compute_precision=getattr(ct.precision, _PRECISIONS[settings.precision]),
                )
            except Exception as exc:
                raise BuildError(f"Core ML conversion failed: {type(exc).__name__}: {str(exc)[:500]}",
                                 tail(log.getvalue()) or "The model uses an op coremltools cannot convert.") from exc
            _set_metadata(mlmodel, captured)
            mlmodel.save(str(path))
        spec = ct.utils.load_spec(str(path))
        requirements = {
            "runtime": "Core ML",
            "minimum_deployment_target": deployment.name,
            "specification_version": spec.specificationVersion,
            "compute_precision": settings.precision,
            "operators": sorted(program_op_types(spec)),
        }
        return Emitted(path, requirements, [f"ML program, compute precision {settings.precision}"])

    def check_structure(self, emitted: Emitted, captured: CapturedModel, settings: FormatSettings) -> list[str]:
        ct = _ct()
        path = emitted.path
        if not (path / "Manifest.json").is_file():
            return [f"{path.name} has no Manifest.json: not a Core ML package"]
        try:
            spec = ct.utils.load_spec(str(path))
        except Exception as exc:
            return [f"cannot read the package's model spec: {exc}"]
        problems = []
        expected_version = getattr(ct.target, self.option(settings, "minimum_deployment_target")).value
        if spec.WhichOneof("Type") != "mlProgram":
            problems.append(f"model type is {spec.WhichOneof('Type')}, expected mlProgram")
        if spec.specificationVersion != expected_version:
            problems.append(f"specification version {spec.specificationVersion}, expected {expected_version}")
        problems += _io_problems(spec, captured)
        problems += _weight_problems(spec, path)
        return problems

    def open(self, path: Path, threads: int) -> Runner:
        if platform.system() != "Darwin":
            return _reference_runner(path)
        return self.open_for_timing(path, threads)

    def open_for_timing(self, path: Path, threads: int) -> Runner:
        if platform.system() != "Darwin":
            raise RuntimeUnavailable(f"Core ML prediction needs macOS (this is {platform.system()})")
        ct = _ct()
        model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
        spec = model.get_spec()
        in_names = [i.name for i in spec.description.input]
        out_names = [o.name for o in spec.description.output]

        def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
            feed = {n: a.astype(np.int32) if a.dtype == np.int64 else a for n, a in zip(in_names, inputs)}
            result = model.predict(feed)
            return [np.asarray(result[n]) for n in out_names]

        return run

    def verification_note(self) -> str:
        if platform.system() == "Darwin":
            return ""
        return ("numerics checked with edgepack's NumPy reference executor for ML programs, "
                "not Core ML itself (Core ML prediction needs macOS)")

    def converter_versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, "coremltools": _ct().__version__}


def _reference_runner(path: Path) -> Runner:
    missing = unsupported_ops(path)
    if missing:
        raise RuntimeUnavailable("Core ML prediction needs macOS, and edgepack's reference executor "
                                 f"cannot evaluate op(s) {', '.join(missing)}")
    spec = _ct().utils.load_spec(str(path))
    in_names = [i.name for i in spec.description.input]
    out_names = [o.name for o in spec.description.output]

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        try:
            result = run_package(path, dict(zip(in_names, inputs)))
        except UnsupportedOp as exc:
            raise RuntimeUnavailable(f"Core ML prediction needs macOS, and the reference executor cannot run: {exc}") from exc
        return [result[n] for n in out_names]

    return run


def _input_type(ct: Any, spec: Any) -> Any:
    if spec.dtype not in _INPUT_DTYPES:
        raise BuildError(f"Core ML models cannot take {spec.dtype} input '{spec.name}'.", "Pass it as float32 or int32.")
    shape = spec.shape
    if spec.dynamic_axes():  # ML programs need a bounded range: 1 .. 8x the example size (at least 2048)
        shape = ct.Shape([ct.RangeDim(lower_bound=1, upper_bound=max(8 * size, 2048), default=size) if symbol else size
                          for symbol, size in zip(spec.dynamic, spec.shape)])
    return ct.TensorType(name=spec.name, shape=shape, dtype=_INPUT_DTYPES[spec.dtype])


def _output_type(ct: Any, name: str, example: np.ndarray) -> Any:
    # fp16 programs would otherwise return fp16 arrays; apps expect the model's own float32.
    return ct.TensorType(name=name, dtype=np.float32) if example.dtype == np.float32 else ct.TensorType(name=name)


def _set_metadata(mlmodel: Any, captured: CapturedModel) -> None:
    loaded = captured.loaded
    mlmodel.author = "edgepack"
    mlmodel.short_description = f"{loaded.name}, packaged by edgepack {__version__}"
    mlmodel.version = __version__
    meta = mlmodel.user_defined_metadata
    meta["edgepack.version"] = __version__
    meta["edgepack.model"] = loaded.name
    meta["edgepack.source"] = str(loaded.source.get("reference", ""))
    meta["edgepack.capture"] = captured.strategy
    if loaded.labels:
        meta["edgepack.labels"] = json.dumps(loaded.labels)


def _io_problems(spec: Any, captured: CapturedModel) -> list[str]:
    problems = []
    inputs = {i.name: i for i in spec.description.input}
    for declared in captured.loaded.inputs:
        found = inputs.get(declared.name)
        if found is None:
            problems.append(f"input '{declared.name}' is missing (package has {sorted(inputs)})")
        elif not declared.dynamic_axes() and tuple(found.type.multiArrayType.shape) != declared.shape:
            problems.append(f"input '{declared.name}' has shape {list(found.type.multiArrayType.shape)}, expected {list(declared.shape)}")
    outputs = [o.name for o in spec.description.output]
    if outputs != captured.output_names:
        problems.append(f"outputs are {outputs}, expected {captured.output_names}")
    return problems


def _weight_problems(spec: Any, package: Path) -> list[str]:
    """Every weight blob the program references must lie inside the package's weight file."""
    problems = []
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                for value in op.attributes.values():
                    if value.WhichOneof("value") != "blobFileValue":
                        continue
                    blob = value.blobFileValue
                    weight_file = package / "Data" / "com.apple.CoreML" / blob.fileName.replace("@model_path/", "")
                    if not weight_file.is_file():
                        problems.append(f"weight file {blob.fileName} is missing")
                    elif blob.offset >= weight_file.stat().st_size:
                        problems.append(f"weight blob at offset {blob.offset} lies beyond the end of {blob.fileName}")
    return sorted(set(problems))
