"""A shape guard in the saved lite program: a .ptl is checked only at the declared shapes (a dynamic dimension at
its example, half and double size), and a trace can silently compute something else at another shape (a list or
an anchor table built for the traced size). The guard, a scripted wrapper around the captured module, raises in
the app for an input whose rank or fixed dimensions differ from the declaration, before any of the model runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from ...inputs import InputSpec
from ...paths import scratch_folder

MESSAGE = "edgepack shape guard"
_MODULE = "edgepack_lite_shape_guard"  # the saved class is __torch__.edgepack_lite_shape_guard.ShapeGuard


def declared_shapes(inputs: list[InputSpec]) -> dict[str, list[int | str]]:
    """Per input, each dimension's fixed size, or its symbol when declared dynamic (not guarded)."""
    return {spec.name: [spec.dynamic_axes().get(axis, size) for axis, size in enumerate(spec.shape)] for spec in inputs}


def guarded(module: torch.jit.ScriptModule, inputs: list[InputSpec]) -> torch.jit.ScriptModule:
    """`module` behind a check of every input's rank and fixed dimensions; same inputs, same outputs."""
    args = [f"a{i}" for i in range(len(inputs))]
    lines = []
    for arg, spec in zip(args, inputs):
        shape = declared_shapes([spec])[spec.name]
        text = "x".join(str(d) for d in shape)
        conditions = [f"{arg}.dim() != {len(shape)}"] + [
            f"{arg}.size({axis}) != {size}" for axis, size in enumerate(shape) if isinstance(size, int)
        ]
        message = (
            f"{MESSAGE}: input '{spec.name}' must have shape {text} (the shape this model was built and checked "
            "at; upper-case symbols may vary), got "
        )
        lines += [
            f"        if {' or '.join(conditions)}:",
            f"            raise RuntimeError({message!r} + str({arg}.size()))",
        ]
    source = "\n".join(
        [
            "import torch",
            "",
            "",
            "class ShapeGuard(torch.nn.Module):",
            "    def __init__(self, inner):",
            "        super().__init__()",
            "        self.inner = inner",
            "",
            f"    def forward(self, {', '.join(args)}):",
            *lines,
            f"        return self.inner({', '.join(args)})",
            "",
        ]
    )
    with scratch_folder() as tmp:  # torch.jit.script reads the class's source from its file
        file = Path(tmp) / f"{_MODULE}.py"
        file.write_text(source, encoding="utf-8")
        module_spec = importlib.util.spec_from_file_location(_MODULE, file)
        assert module_spec is not None and module_spec.loader is not None
        loaded = importlib.util.module_from_spec(module_spec)
        sys.modules[_MODULE] = loaded
        try:
            module_spec.loader.exec_module(loaded)
            return torch.jit.script(loaded.ShapeGuard(module).eval())
        finally:
            sys.modules.pop(_MODULE, None)
