"""Derive a lite runtime's operator table from the torch wheel of the same release. Run once per runtime:

    pip download --no-deps --only-binary=:all: torch==1.13.1 --python-version 3.10 \\
        --platform macosx_11_0_arm64 -d /tmp/torch1131
    python -m edgepack.formats.torchscript_lite.runtimes.derive \\
        /tmp/torch1131/torch-1.13.1-cp310-none-macosx_11_0_arm64.whl > pytorch_lite_1.13.1.json

Two sources inside the wheel, read straight out of the zip (nothing is installed or imported from it):
  torch/include/ATen/RegistrationDeclarations.h   every native (ATen) function with its schema string
  torch/lib/libtorch_cpu.*                        the schema strings the JIT/prim, quantized and prepacked
                                                  operators are registered with (printable runs of bytes)
The published Android AAR (org.pytorch:pytorch_android_lite:1.13.1) and the iOS pod LibTorch-Lite
1.13.0.1 are lite builds of the same 1.13 sources; they register the native and prim operators below
but not the few full-JIT-only ones (profiling, fusion groups), so the table errs on the side of
presence for those only, which no saved lite program calls.

An operator's key is what a saved lite program names: "namespace::name" or "namespace::name.overload".
"arguments" counts every argument (keyword-only ones included), "defaults" those with a default value;
a program may pass at most "arguments" of them. Where one name carries several schemas (JIT operators
may repeat a name), the one with the most arguments is kept.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path

SOURCES = {
    # torch 1.13.1 for CPython 3.10 on macOS arm64: the smallest 1.13.1 wheel that carries both sources.
    "torch-1.13.1-cp310-none-macosx_11_0_arm64.whl": "0122806b111b949d21fa1a5f9764d1fd2fcc4a47cb7f8ff914204fd4fc752ed5",
}
RUNTIME = {
    "name": "PyTorch lite interpreter 1.13.1",
    "runtimes": ["pytorch_android_lite 1.13.1", "LibTorch-Lite 1.13.0.1"],
    "release": "torch 1.13.1",
}
DECLARATIONS = "torch/include/ATen/RegistrationDeclarations.h"
NAMESPACES = ("aten", "prim", "quantized", "_quantized", "prepacked", "sparse")
# A JSON string: string defaults are escaped inside it (str mode=\"constant\"), so stop only at an unescaped quote.
_DECLARED = re.compile(r'"schema": ("(?:[^"\\]|\\.)+")')
_SCHEMA = re.compile(rb"^([A-Za-z_][A-Za-z0-9_]*)::([A-Za-z0-9_]+)(\.[A-Za-z0-9_]+)?\(.*\) ?-> ?\S.*$")


def parse_schema(schema: str) -> tuple[str, int, int]:
    """("ns::name.overload", arguments, defaults) of a schema string such as
    "aten::add.Tensor(Tensor self, Tensor other, *, Scalar alpha=1) -> Tensor"."""
    head, _, rest = schema.partition("(")
    depth, args, current = 1, [], ""
    for char in rest:
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
            if depth == 0:
                break
        if char == "," and depth == 1:
            args.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        args.append(current.strip())
    args = [a for a in args if a != "*"]
    return head, len(args), sum(1 for a in args if "=" in a)


def derive(wheel: Path) -> dict:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if SOURCES.get(wheel.name) != digest:
        raise SystemExit(f"{wheel.name} (sha256 {digest}) is not a known source: {SOURCES}")
    schemas: dict[str, set[str]] = {"native": set(), "library": set()}
    with zipfile.ZipFile(wheel) as archive:
        declared = _DECLARED.findall(archive.read(DECLARATIONS).decode("utf-8"))
        schemas["native"] = {json.loads(quoted) for quoted in declared}
        library = next(n for n in archive.namelist() if re.fullmatch(r"torch/lib/libtorch_cpu\.(so|dylib)", n))
        for run in re.findall(rb"[\x20-\x7e]{8,}", archive.read(library)):
            match = _SCHEMA.match(run)
            if match and match.group(1).decode() in NAMESPACES:
                schemas["library"].add(run.decode("ascii"))
    operators: dict[str, dict] = {}
    for origin, found in schemas.items():
        for schema in sorted(found):
            name, arguments, defaults = parse_schema(schema)
            known = operators.get(name)
            if known is None or arguments > known["arguments"]:
                operators[name] = {"schema": schema, "arguments": arguments, "defaults": defaults, "from": origin}
    return {
        **RUNTIME,
        "source": {
            "wheel": wheel.name,
            "sha256": digest,
            "url": "https://pypi.org/project/torch/1.13.1/#files",
            "files": [DECLARATIONS, library],
        },
        "derived_by": "edgepack/formats/torchscript_lite/runtimes/derive.py",
        "counts": {
            "native_schemas": len(schemas["native"]),
            "library_schemas": len(schemas["library"]),
            "operators": len(operators),
        },
        "operators": dict(sorted(operators.items())),
    }


def dump(table: dict) -> str:
    """JSON with one operator per line, so that a table's diff reads operator by operator."""
    operators = table["operators"]
    head = json.dumps({k: v for k, v in table.items() if k != "operators"}, indent=2)[:-2]
    lines = [f"  {json.dumps(name)}: {json.dumps(entry)}" for name, entry in operators.items()]
    return head + ',\n  "operators": {\n' + ",\n".join("  " + line for line in lines) + "\n  }\n}\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sys.stdout.write(dump(derive(Path(sys.argv[1]))))
