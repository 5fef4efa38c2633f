"""Running a .pte: ExecuTorch's own runtime (the Python bindings of the C++ runtime, with the XNNPACK
delegate and the portable kernels), or, for a program delegated to Core ML (which ExecuTorch runs only on
Apple platforms), the embedded ML program through edgepack's Core ML reference executor."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ...compare import Runner
from ...errors import RuntimeUnavailable
from ...noise import quiet_converter
from ...paths import scratch_folder


def available_backends() -> set[str]:
    with quiet_converter(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from executorch.runtime import Runtime

        return set(Runtime.get().backend_registry.registered_backend_names)


def executorch_runner(program: Path | bytes, threads: int) -> Runner:
    """The program's `forward` in ExecuTorch's runtime, on a threadpool of `threads` threads. The runtime
    prints cpuinfo lines from C++ when it starts: captured at the file-descriptor level."""
    with quiet_converter() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "This API is experimental": the bindings are ExecuTorch's Python runtime
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        portable_lib._unsafe_reset_threadpool(threads)
        try:
            data = program if isinstance(program, bytes) else program.read_bytes()
            loaded = Runtime.get().load_program(data)
            method = loaded.load_method("forward")
        except Exception as exc:
            raise RuntimeError(f"{exc} ({log.getvalue().strip()[-300:]})") from exc
    first = [True]
    keep = (loaded, data)  # the method runs inside the loaded program's memory

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        assert keep
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]
        if first[0]:  # the first run initializes kernels, which can print too
            first[0] = False
            with quiet_converter():
                outputs = method.execute(tensors)
        else:
            outputs = method.execute(tensors)
        return [t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in outputs]

    return run


def coreml_reference_runner(path: Path) -> Runner:
    """Run a .pte whose plan is Core ML delegate calls only, each embedded ML program through the reference
    executor (the numbers do not come from ExecuTorch); RuntimeUnavailable when the plan has anything else."""
    from ..coreml.executor import UnsupportedOp, run_package, unsupported_ops
    from .program import extract_coreml, read

    saved = read(path)
    others = [
        kind
        for kind, args in saved.instructions
        if kind == "KernelCall" or (kind == "DelegateCall" and saved.delegates[args.delegate_index] != "CoreMLBackend")
    ]
    if others:
        kernels = ", ".join(saved.kernels) or "none"
        backends = ", ".join(sorted(set(saved.delegates) - {"CoreMLBackend"})) or "none"
        raise RuntimeUnavailable(
            "ExecuTorch's Core ML delegate runs only on Apple platforms, and the reference executor evaluates only "
            f"the embedded Core ML programs, while this plan also runs portable kernels ({kernels}) and other "
            f"delegates ({backends})"
        )
    payloads = {index: saved.delegate_payload(index) for index in range(len(saved.delegates))}
    with scratch_folder(prefix="edgepack-pte-coreml-") as tmp:  # checked once before any run
        for index, payload in payloads.items():
            package, _ = extract_coreml(payload, Path(tmp) / str(index))
            missing = unsupported_ops(package)
            if missing:
                raise RuntimeUnavailable(
                    "ExecuTorch's Core ML delegate runs only on Apple platforms, and edgepack's "
                    f"reference executor cannot evaluate op(s) {', '.join(missing)}"
                )

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        values: dict[int, Any] = dict(zip(saved.inputs, inputs))
        with scratch_folder(prefix="edgepack-pte-coreml-") as tmp:
            for _, args in saved.instructions:  # delegate calls only (checked above)
                package, metadata = extract_coreml(payloads[args.delegate_index], Path(tmp) / str(args.delegate_index))
                names_in, names_out = metadata["inputNames"], metadata["outputNames"]
                feed = {name: values[index] for name, index in zip(names_in, args.args[: len(names_in)])}
                try:
                    result = run_package(package, feed)
                except UnsupportedOp as exc:
                    raise RuntimeUnavailable(
                        f"the reference executor cannot run the embedded Core ML program: {exc}"
                    ) from exc
                for name, index in zip(names_out, args.args[len(names_in) :]):
                    values[index] = np.asarray(result[name])
        return [values[index] for index in saved.outputs]

    return run
