"""Error messages that name what the caller wrote: from Python, `eval_data=`, not the CLI's `--eval-data`.

The pipeline's messages name CLI flags (most users meet them there). Every option of the Python API has
the flag's name with '_' for '-', so one table turns a message about a flag into one about the parameter.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from ..errors import EdgepackError

# CLI flag -> the Python API's parameter.
PARAMETERS = {
    "--model": "model",
    "--input": "example_inputs",
    "--target": "target",
    "--out": "out",
    "--name": "name",
    "--weights": "weights",
    "--trust-weights": "trust_weights",
    "--precision": "precision",
    "--optimize-for": "optimize_for",
    "--calibration": "calibration",
    "--eval-data": "eval_data",
    "--check-inputs": "check_inputs",
    "--capture": "capture",
    "--device-policy": "device_policy",
    "--trace-device": "trace_device",
    "--sign-key": "sign_key",
    "--archive": "archive",
    "--allow-partial": "allow_partial",
    "--strict": "strict",
    "--no-budgets": "no_budgets",
    "--track": "track",
    "--tracking-uri": "tracking_uri",
    "--register": "register",
}
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*(?![\w-])")


def python_names(text: str) -> str:
    """`text` with every CLI flag the API has a parameter for written as that parameter (`eval_data=`)."""
    return _FLAG.sub(lambda m: f"{PARAMETERS[m.group(0)]}=" if m.group(0) in PARAMETERS else m.group(0), text)


@contextlib.contextmanager
def named_for_python() -> Iterator[None]:
    """Re-raise edgepack's errors (same object, same class) with the parameters' names in place of flags."""
    try:
        yield
    except EdgepackError as exc:
        exc.message, exc.hint = python_names(exc.message), python_names(exc.hint)
        exc.args = (exc.message, *exc.args[1:])
        raise
