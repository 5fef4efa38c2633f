"""Which data a build's quantization needs, and where it comes from: loaded once per build, before capture,
so a missing calibration set fails fast; the evaluation set's eager outputs are computed after capture."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import precisions
from ..capture.ladder import CapturedModel
from ..errors import UsageError
from ..formats import FORMATS
from ..inputs import sample_inputs
from ..load import LoadedModel
from ..targets import Target
from .accuracy import eval_set
from .calibration import DataSource, Samples, demo_split, describe, load_samples
from .ladder import QuantData, needs_calibration, rungs

# Without --eval-data (and outside the demo), accuracy is measured on this many seeded random inputs.
RANDOM_EVAL_SAMPLES = 32


@dataclass
class QuantSamples:
    calibration: Samples | None
    calibration_source: str
    evaluation: Samples
    eval_source: str
    real: bool  # False for seeded random inputs

    def measured_on(self, captured: CapturedModel) -> QuantData:
        """The data the ladder uses: eager fp32's outputs for the evaluation samples, computed once."""
        return QuantData(
            self.calibration, self.calibration_source, eval_set(captured, self.evaluation, self.eval_source, self.real)
        )


def quantization_samples(
    loaded: LoadedModel,
    targets: list[Target],
    calibration: DataSource | None,
    eval_data: DataSource | None,
    search_dir: Path | None,
) -> QuantSamples | None:
    """None when every format is built in fp32. A static scheme without calibration data is a usage
    error: never calibrate on random numbers."""
    firsts = [(FORMATS[f.name], f.precision) for t in targets for f in t.formats]
    if all(precision != precisions.AUTO and rungs(fmt, precision)[0][0] == "fp32" for fmt, precision in firsts):
        return None
    samples: Samples | None
    if calibration is not None and calibration != "":
        samples = load_samples(calibration, loaded, search_dir, "--calibration")
        calibration_source = f"{len(samples)} samples from {describe(calibration)}"
    else:
        samples = demo_split(loaded, "calib")
        calibration_source = f"the demo's calibration split ({len(samples)} images)" if samples else ""
    static = sorted({f"{fmt.name} {precision}" for fmt, precision in firsts if needs_calibration(fmt, precision)})
    if static and not samples:
        raise UsageError(
            f"Static int8 quantization ({', '.join(static)}) needs calibration data, and none was given.",
            "Pass --calibration with a .npz (one array per input), a folder of .npy files or images, "
            "or a module:attr callable yielding batches; or choose --precision int8-dynamic.",
        )
    if eval_data is not None and eval_data != "":
        evaluation = load_samples(eval_data, loaded, search_dir, "--eval-data")
        return QuantSamples(
            samples, calibration_source, evaluation, f"{len(evaluation)} samples from {describe(eval_data)}", True
        )
    if (demo_eval := demo_split(loaded, "eval")) is not None:
        return QuantSamples(
            samples, calibration_source, demo_eval, f"the demo's held-out eval split ({len(demo_eval)} images)", True
        )
    evaluation = [sample_inputs(loaded.inputs, loaded.module, 1000 + seed) for seed in range(RANDOM_EVAL_SAMPLES)]
    return QuantSamples(
        samples,
        calibration_source,
        evaluation,
        f"{RANDOM_EVAL_SAMPLES} seeded random inputs (no --eval-data given: figures on random data say "
        "little about accuracy on real inputs, and top-1 agreement is reported but not gated)",
        False,
    )
