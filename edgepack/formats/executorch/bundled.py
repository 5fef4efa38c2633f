"""The golden vectors as an ExecuTorch BundledProgram (.bpte): the .pte's program plus test cases (the golden
inputs and eager PyTorch's outputs), which an app checks with ExecuTorch's own bundled-program verification
(`verify_result_with_bundled_expected_output`, which loads a case's inputs, runs and compares)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ...compare import Runner
from ...errors import BuildError, RuntimeUnavailable
from ...noise import quiet_converter

SUFFIX = ".bpte"


def write(pte: Path, path: Path, inputs: list[list[np.ndarray]], expected: list[list[np.ndarray]]) -> int:
    """Bundle the .pte at `pte` with one test case per golden sample; return the number of test cases."""
    import torch
    from executorch.devtools import BundledProgram
    from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
    from executorch.devtools.bundled_program.serialize import serialize_from_bundled_program_to_flatbuffer

    cases = [
        MethodTestCase(
            inputs=[torch.from_numpy(np.ascontiguousarray(a)) for a in sample],
            expected_outputs=[torch.from_numpy(np.ascontiguousarray(e)) for e in outputs],
        )
        for sample, outputs in zip(inputs, expected)
    ]
    with quiet_converter():
        bundle = BundledProgram(
            None, [MethodTestSuite(method_name="forward", test_cases=cases)], pte_file_path=str(pte)
        )
        path.write_bytes(serialize_from_bundled_program_to_flatbuffer(bundle))
    if program_sha256(path) != hashlib.sha256(pte.read_bytes()).hexdigest():
        raise BuildError(f"{path.name} does not embed the program of {pte.name} byte for byte.", "Report this.")
    return len(cases)


def program_sha256(path: Path) -> str:
    """sha256 of the program the bundled program embeds (the bytes of the .pte it was made from)."""
    from .program import bundled_program_bytes

    return hashlib.sha256(bundled_program_bytes(path)).hexdigest()


def self_test(path: Path, atol: float, rtol: float) -> int:
    """ExecuTorch's own bundled-program verification of every test case, as an app runs it; the number of cases.
    Raises AssertionError (ExecuTorch's message) when an output differs beyond atol/rtol."""
    from executorch.devtools.bundled_program.serialize import deserialize_from_flatbuffer_to_bundled_program

    data = path.read_bytes()
    cases = len(deserialize_from_flatbuffer_to_bundled_program(data).method_test_suites[0].test_cases)
    with quiet_converter():
        from executorch.extension.pybindings import portable_lib

        bundle = portable_lib._load_bundled_program_from_buffer(data)
        for index in range(cases):  # loads the case's inputs, executes, compares with its expected outputs
            bundle.verify_result_with_bundled_expected_output("forward", index, rtol=rtol, atol=atol)
    return cases


def open_bundled(path: Path, threads: int) -> Runner:
    """The program inside the .bpte, run in ExecuTorch's runtime (what `edgepack verify` checks against the
    golden vectors)."""
    from .program import bundled_program_bytes, read
    from .runtime import available_backends, executorch_runner

    program = bundled_program_bytes(path)
    missing = sorted(set(read(program).delegates) - available_backends())
    if missing:
        raise RuntimeUnavailable(
            f"ExecuTorch's {', '.join(missing)} runs only on Apple platforms: the bundled program "
            "is checked on a device"
        )
    return executorch_runner(program, threads)
