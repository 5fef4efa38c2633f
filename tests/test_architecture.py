"""The architecture's promises: a format is one folder (here: one class in this file), a precision is one
row of edgepack/precisions.py, the package has no import cycles, and nothing outside formats/ names a format."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from edgepack import precisions
from edgepack.bundle.inspect import inspect_bundle
from edgepack.bundle.install import install_bundle
from edgepack.bundle.manifest import read_manifest
from edgepack.bundle.verify import verify_bundle
from edgepack.errors import UsageError
from edgepack.formats import FORMATS
from edgepack.quantize.ladder import rungs
from edgepack.targets import load_target

from .conftest import write_fast_target

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edgepack"


@pytest.fixture
def toy_format():
    """The plugin format of tests/toy_format.py, registered for one test only."""
    import importlib

    from . import toy_format as module

    importlib.reload(module)  # registers it (again, after an earlier test removed it)
    yield FORMATS["toy_state_dict"]
    FORMATS.pop("toy_state_dict")


def test_a_format_registered_outside_edgepack_goes_through_the_whole_pipeline(toy_format, tmp_path):
    from edgepack.pipeline import BuildRequest, build

    formats = '[formats.toy_state_dict]\nprecision = "fp32"\n'
    target = write_fast_target(tmp_path, "toy", formats)
    target.write_text(target.read_text().replace("footprint = false", "footprint = true"))
    (report,) = build(BuildRequest(targets=[str(target)], out_dir=tmp_path / "dist", archive=True))
    assert report.ok, report.problems
    (artifact,) = report.artifacts
    assert artifact.smoke.status == "passed" and artifact.latency is not None and artifact.latency.p50 > 0
    assert artifact.cold_load_ms is not None, artifact.footprint_reason  # the fresh process found the format too
    bundle = Path(report.bundle_dir)
    manifest = read_manifest(bundle / "manifest.json")  # schema-checked on read
    assert manifest["artifacts"][0]["format"] == "toy_state_dict"
    assert manifest["artifacts"][0]["requirements"]["tensors"] == len(torch.load(bundle / "demo-digits.toy")["state"])
    archive = bundle.parent / "toy.zip"
    assert "demo-digits.toy" in " ".join(zipfile.ZipFile(archive).namelist())
    verification = verify_bundle(archive)
    assert verification.ok, verification.to_json()["failures"]
    assert any(c.name.startswith("smoke toy_state_dict") and c.status == "ok" for c in verification.checks)
    assert inspect_bundle(bundle)["artifacts"][0]["format"] == "toy_state_dict"
    with pytest.raises(UsageError, match="android demo app runs torchscript_lite"):
        install_bundle(_copy_of_android_demo(tmp_path), bundle)


def _copy_of_android_demo(tmp_path: Path) -> Path:
    app_dir = tmp_path / "android-demo"
    for marker in ("settings.gradle.kts", "app/build.gradle.kts", "app/src/main/AndroidManifest.xml"):
        (app_dir / marker).parent.mkdir(parents=True, exist_ok=True)
        (app_dir / marker).write_text((ROOT / "android-demo" / marker).read_text())
    return app_dir


def test_a_precision_added_to_the_table_alone_reaches_targets_ladder_and_smoke_tolerance(monkeypatch, tmp_path):
    int4 = precisions.Precision("int4-weights", quantized=True, calibrated=False)
    monkeypatch.setattr(precisions, "TABLE", (int4, *precisions.TABLE))
    monkeypatch.setattr(FORMATS["coreml"], "precisions", (*FORMATS["coreml"].precisions, "int4-weights"), raising=False)
    target = load_target(
        str(write_fast_target(tmp_path, "int4", '[formats.coreml]\nprecision = "int4-weights"\n')),
        {name: set(fmt.option_defaults) for name, fmt in FORMATS.items()},
    )
    (settings,) = target.formats
    FORMATS["coreml"].validate(settings)  # the targets' validation knows it
    assert rungs(FORMATS["coreml"], "int4-weights")[0][:2] == ["int4-weights", "palettize-4"]  # the ladder orders it
    assert settings.tolerance_for("int4-weights") == settings.quantized_tolerance  # smoke-tested as quantized
    assert rungs(FORMATS["onnx"], "int4-weights")[0][0] == "fp32"  # a format without it builds its nearest


def test_a_precision_missing_from_the_table_is_refused(tmp_path):
    target = load_target(
        str(write_fast_target(tmp_path, "int9", '[formats.onnx]\nprecision = "int9"\n')),
        {name: set(fmt.option_defaults) for name, fmt in FORMATS.items()},
    )
    with pytest.raises(UsageError, match="Unknown precision 'int9'"):
        FORMATS["onnx"].validate(target.formats[0])


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_precision_is_in_the_table(name):
    fmt = FORMATS[name]
    assert set(fmt.precisions) <= set(precisions.names()), name
    assert set(fmt.calibrated_precisions) <= set(fmt.precisions)
    for requested in precisions.names():
        scheme, _ = fmt.nearest_precision(requested)
        assert scheme in fmt.precisions, (name, requested, scheme)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """edgepack modules a module imports, at module level or inside functions (an import moved into a
    function still ties the two modules together); only `if TYPE_CHECKING:` blocks are left out."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    type_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            if base.startswith("edgepack"):
                submodules = {f"{base}.{a.name}" for a in node.names} & MODULES.keys()
                # `from pkg import submodule` runs the submodule; importing any other name runs pkg's __init__.
                found |= submodules if len(submodules) == len(node.names) else {base} | submodules
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("edgepack"))
    return found


def test_the_package_has_no_import_cycles():
    graph = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}
    cycles = []

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in stack:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, stack + [nxt], done)
        done.add(node)

    finished: set[str] = set()
    for start in sorted(graph):
        if start not in finished:
            visit(start, [start], finished)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles[:5])


# Runtime constants and file suffixes that only formats/<name>/ may use; user-facing text and targets may name them.
_FORMAT_WORDS = re.compile(
    r"CPUExecutionProvider|\.mlpackage|\.ptl\b|\.onnx\b|\.ort\b|coremltools|onnxruntime"
    r"|\"(onnx|coreml|torchscript_lite)\""
)
# Outside formats/: the benchmarks (they compare formats by name with by-hand baselines), the demo, and the schema.
_ALLOWED = ("formats/", "benchmarks/", "demo/", "schemas/")


def _code_outside_strings(path: Path) -> list[tuple[int, str]]:
    """Source lines with docstrings, comments and user-facing message strings (f-strings, hints) removed:
    what is left is the code that could branch on a format."""
    tree = ast.parse(path.read_text())
    text_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and " " in node.value:
            text_lines.update(range(node.lineno, node.end_lineno + 1))
        if isinstance(node, ast.JoinedStr):
            text_lines.update(range(node.lineno, node.end_lineno + 1))
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#", 1)[0]
        if number not in text_lines and code.strip():
            lines.append((number, code))
    return lines


def test_nothing_outside_formats_names_a_format_or_its_runtime():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(_ALLOWED):
            continue
        found += [
            f"{relative}:{n}: {code.strip()}" for n, code in _code_outside_strings(path) if _FORMAT_WORDS.search(code)
        ]
    assert not found, "\n".join(found)


def test_the_grep_test_can_fail(tmp_path):
    leaked = tmp_path / "leak.py"
    leaked.write_text('def stabilize(path):\n    if path.suffix == ".ptl":\n        return []\n')
    assert any(_FORMAT_WORDS.search(code) for _, code in _code_outside_strings(leaked))


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory) -> Path:
    """An ONNX-only bundle of the demo (the built-in iot target also ships a .pte, whose runtime needs torch)."""
    from edgepack.pipeline import BuildRequest, build

    folder = tmp_path_factory.mktemp("onnx-only")
    target = write_fast_target(folder, "onnx-only", '[formats.onnx]\nprecision = "fp32"\nopset = 18\n')
    (report,) = build(BuildRequest(targets=[str(target)], out_dir=folder / "dist"))
    assert report.ok, report.problems
    return Path(report.bundle_dir)


def test_verify_and_inspect_of_an_onnx_bundle_do_not_import_torch(onnx_bundle):
    bundle = str(onnx_bundle)
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom edgepack.cli import app\n"
        f"for command in (['verify', {bundle!r}], ['inspect', {bundle!r}]):\n"
        "    result = CliRunner().invoke(app, command)\n"
        "    assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'executorch')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_public_api_is_exported():
    import edgepack

    for name in (
        "build",
        "diagnose",
        "verify_bundle",
        "inspect_bundle",
        "BuildRequest",
        "BuildReport",
        "InputSpec",
        "EdgepackError",
        "UsageError",
        "BuildError",
        "CaptureError",
    ):
        assert hasattr(edgepack, name), name
