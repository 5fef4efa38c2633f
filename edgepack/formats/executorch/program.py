"""Reading a saved .pte back without running it: its backends, the portable kernels it calls, and the
Core ML programs the Core ML delegate embedded (extracted as .mlpackage folders)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class SavedProgram:
    """What a .pte's `forward` plan holds."""

    program: Any = field(repr=False)
    delegates: list[str]  # backend id per delegate, in the plan's order
    kernels: list[str]  # the portable operators the runtime must have ("aten::mean.out")
    instructions: list[tuple[str, Any]]  # ("DelegateCall" | "KernelCall" | ..., args)
    inputs: list[int]
    outputs: list[int]
    named_data_bytes: int = 0  # the weights delegates keep in the .pte's named data store (XNNPACK's)

    def delegate_payload(self, index: int) -> bytes:
        plan = self.program.execution_plan[0]
        reference = plan.delegates[index].processed
        if reference.location.name == "INLINE":
            return bytes(self.program.backend_delegate_data[reference.index].data)
        raise ValueError(f"delegate {index}'s data lies in segment {reference.index}, which was not read")


def read(path: Path | bytes) -> SavedProgram:
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = deserialize_pte_binary(path if isinstance(path, bytes) else path.read_bytes())
    program = pte.program
    named = sum(len(getattr(b, "buffer", b)) for b in pte.named_data.buffers) if pte.named_data is not None else 0
    plan = next(p for p in program.execution_plan if p.name == "forward")
    instructions = [(type(i.instr_args).__name__, i.instr_args) for chain in plan.chains for i in chain.instructions]
    return SavedProgram(
        program,
        [d.id for d in plan.delegates],
        sorted({f"{op.name}.{op.overload}" if op.overload else op.name for op in plan.operators}),
        instructions,
        list(plan.inputs),
        list(plan.outputs),
        named,
    )


def extract_coreml(payload: bytes, folder: Path) -> tuple[Path, dict]:
    """Unflatten a Core ML delegate payload into `folder`: the .mlpackage and its metadata (input and
    output names in the delegate's argument order)."""
    from executorch.backends.apple.coreml import executorchcoreml

    folder.mkdir(parents=True, exist_ok=True)
    if not executorchcoreml.unflatten_directory_contents(payload, str(folder)):
        raise ValueError("the Core ML delegate's payload could not be unflattened")
    packages = sorted(folder.rglob("*.mlpackage"))
    metadata_files = sorted(folder.rglob("metadata.json"))
    if not packages or not metadata_files:
        raise ValueError("the Core ML delegate's payload holds no model.mlpackage and metadata.json")
    return packages[0], json.loads(metadata_files[0].read_text(encoding="utf-8"))


def bundled_program_bytes(path: Path) -> bytes:
    """The .pte bytes a BundledProgram (.bpte) embeds."""
    from executorch.devtools.bundled_program.serialize import deserialize_from_flatbuffer_to_bundled_program

    return bytes(deserialize_from_flatbuffer_to_bundled_program(path.read_bytes()).program)
