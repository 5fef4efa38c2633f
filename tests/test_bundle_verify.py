"""Bundles you can ship and audit: the manifest schema, golden .bin vectors, ORT format, reproducible
archives, `edgepack verify` (hashes, signature, smoke on golden vectors, safe zips) and `inspect`."""

from __future__ import annotations

import array
import copy
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgepack.bundle import verify as bundle_check
from edgepack.bundle.manifest import git_state, read_manifest, schema_problems
from edgepack.bundle.signing import generate_keypair, sign_manifest
from edgepack.bundle.verify import verify_bundle
from edgepack.cli import app
from edgepack.errors import UsageError
from edgepack.formats import FORMATS
from edgepack.targets import FormatSettings

from .conftest import ALL_FORMATS, write_fast_target

runner = CliRunner()
EPOCH = "1700000000"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("keys")
    generate_keypair(folder / "edgepack.key", folder / "edgepack.pub")
    return folder / "edgepack.key", folder / "edgepack.pub"


@pytest.fixture(scope="module")
def signed_bundles(demo_reports, keys, tmp_path_factory) -> dict[str, Path]:
    """Copies of the demo bundles, signed, that tests copy again before changing them."""
    root = tmp_path_factory.mktemp("signed")
    bundles = {}
    for target, report in demo_reports.items():
        bundles[target] = Path(shutil.copytree(report.bundle_dir, root / target))
        sign_manifest(bundles[target], keys[0])
    return bundles


# Schema -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["ios", "android", "iot"])
def test_every_demo_manifest_matches_the_schema(demo_reports, target):
    manifest = read_manifest(Path(demo_reports[target].bundle_dir) / "manifest.json")  # raises if invalid
    assert manifest["schema_version"] == 2
    provenance = manifest["provenance"]
    assert provenance["source"]["weights_sha256"] == manifest["model"]["source"]["weights_sha256"]
    assert provenance["target"]["file"] == f"{target}.toml"
    assert {"torch", "coremltools", "onnx", "onnxruntime"} <= {k for k, v in provenance["versions"].items() if v}
    assert provenance["capture"]["strategy"] == "trace"
    assert provenance["build_time_source"] == ("SOURCE_DATE_EPOCH" if os.environ.get("SOURCE_DATE_EPOCH") else "clock")
    for artifact in manifest["artifacts"]:
        assert artifact["capture_strategy"] == "trace" and artifact["smoke"] == "passed"


def test_schema_is_strict_on_what_apps_read_and_open_where_stages_add_fields(demo_reports):
    manifest = json.loads((Path(demo_reports["ios"].bundle_dir) / "manifest.json").read_text())
    assert schema_problems(manifest) == []
    extended = copy.deepcopy(manifest)
    extended["artifacts"][0]["precision_requested"] = "int8-dynamic"
    extended["capture"]["rewrites"] = [
        {"kind": "device_constant", "op": "aten::to", "source": "net.py:3", "detail": ""}
    ]
    assert schema_problems(extended) == []
    # Issue 15: every object is closed, so a key the schema does not name (a misspelling) is rejected and named.
    extended["capture"]["rewrites"][0]["x"] = 1
    assert any("'x' was unexpected" in p for p in schema_problems(extended))
    for breaks in (
        lambda m: m["artifacts"][0].pop("sha256"),
        lambda m: m["inputs"][0].update(dtype="complex64"),
        lambda m: m.update(surprise=1),
        lambda m: m["golden"].pop("index"),
        lambda m: next(a for a in m["artifacts"] if a["format"] == "onnx")["requirements"].pop("opset"),
        lambda m: m["files"].append({"path": "../etc/passwd", "sha256": "0" * 64, "size_bytes": 1}),
    ):
        broken = copy.deepcopy(manifest)
        breaks(broken)
        assert schema_problems(broken), "the schema must reject this change"


# Golden vectors for apps without NumPy --------------------------------------------------------------


def test_golden_bin_files_hold_the_npz_arrays_in_plain_little_endian(demo_reports):
    bundle = Path(demo_reports["android"].bundle_dir)
    index = json.loads((bundle / "golden/index.json").read_text())
    assert index["samples"] == 4 and index["byte_order"] == "little"
    assert [e["name"] for e in index["inputs"]] == ["image"] and [e["name"] for e in index["expected"]] == ["logits"]
    assert json.loads((bundle / "manifest.json").read_text())["golden"]["index"] == "golden/index.json"
    with np.load(bundle / "golden/inputs.npz") as inputs, np.load(bundle / "golden/expected.npz") as expected:
        npz = {"image": inputs["image"], "logits": expected["logits"]}
    for entry in index["inputs"] + index["expected"]:
        values = array.array("f")  # what an app does: read the bytes as float32, no NumPy
        values.frombytes((bundle / entry["file"]).read_bytes())
        if sys.byteorder != "little":
            values.byteswap()
        assert entry["dtype"] == "float32" and entry["shape"][0] == 4
        assert list(npz[entry["name"]].shape) == entry["shape"]
        assert values.tolist() == npz[entry["name"]].ravel().tolist()


# ORT format -----------------------------------------------------------------------------------------


def test_iot_bundle_ships_an_ort_model_and_its_required_operators(demo_reports):
    bundle = Path(demo_reports["iot"].bundle_dir)
    onnx_artifact = read_manifest(bundle / "manifest.json")["artifacts"][0]
    ort_entry = onnx_artifact["requirements"]["ort_format"]
    assert (bundle / ort_entry["path"]).read_bytes()[4:8] == b"ORTM"  # the flatbuffer's file identifier
    config = (bundle / ort_entry["required_operators"]).read_text().splitlines()
    assert "# - demo-digits.ort" in config  # the file name only, not the staging path
    ops = {op for line in config if not line.startswith("#") for op in line.split(";")[2].split(",")}
    assert {"MaxPool", "Gemm"} <= ops
    assert any("ort format" in note and "byte-reproducible" in note for note in demo_reports["iot"].artifacts[0].notes)


def test_ort_format_option_must_be_a_bool():
    settings = FormatSettings("onnx", "fp32", None, None, {"opset": 17, "ort_format": "yes"})
    with pytest.raises(UsageError, match="ort_format"):
        FORMATS["onnx"].validate(settings)


# verify ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["ios", "android", "iot"])
def test_verify_passes_on_a_fresh_bundle_and_reruns_every_smoke_test(demo_reports, target):
    result = verify_bundle(Path(demo_reports[target].bundle_dir))
    assert result.ok, result.to_json()["failures"]
    smoke = [c for c in result.checks if c.name.startswith("smoke ")]
    # + the .ort (iot), + the .bpte beside each .pte
    expected = len(demo_reports[target].artifacts) + (1 if target == "iot" else 0) + 1
    # The Core ML-delegated .bpte cannot run off Apple platforms: skipped, with the reason.
    assert len(smoke) == expected and all(
        c.status == "ok" or (target == "ios" and c.name.endswith(".bpte") and c.status == "skipped") for c in smoke
    ), [c.to_json() for c in smoke]
    assert any(c.name == "sha256 golden/inputs/image.bin" and c.status == "ok" for c in result.checks)


TAMPERED = [
    ("ios", "demo-digits.onnx"),
    ("ios", "demo-digits.mlpackage/Data/com.apple.CoreML/weights/weight.bin"),
    ("ios", "demo-digits.mlpackage/Data/com.apple.CoreML/model.mlmodel"),
    ("android", "demo-digits.ptl"),
    ("iot", "demo-digits.ort"),
    ("iot", "demo-digits.required_operators.config"),
    ("android", "golden/inputs.npz"),
    ("android", "golden/expected.npz"),
    ("iot", "golden/inputs/image.bin"),
    ("iot", "golden/expected/logits.bin"),
    ("ios", "golden/index.json"),
    ("android", "manifest.json"),
]


@pytest.mark.parametrize("target,relative", TAMPERED)
def test_verify_names_the_file_after_any_byte_changes(signed_bundles, keys, tmp_path, target, relative):
    bundle = Path(shutil.copytree(signed_bundles[target], tmp_path / target))
    path = bundle / relative
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = verify_bundle(bundle, public_key=keys[1])
    assert not result.ok
    named = [f"{c.name}: {c.detail}" for c in result.failures]
    assert any(relative in text for text in named), named


def test_verify_names_missing_and_added_files(demo_reports, tmp_path):
    bundle = Path(shutil.copytree(demo_reports["android"].bundle_dir, tmp_path / "android"))
    (bundle / "demo-digits.ptl").unlink()
    (bundle / "extra.bin").write_bytes(b"\0")
    failures = {c.name: c.detail for c in verify_bundle(bundle).failures}
    assert failures["sha256 demo-digits.ptl"] == "missing"
    assert failures["artifact torchscript_lite demo-digits.ptl"] == "missing"
    assert "not listed" in failures["file extra.bin"]


def test_verify_cli_exit_codes_and_json(demo_reports, tmp_path):
    bundle = Path(shutil.copytree(demo_reports["iot"].bundle_dir, tmp_path / "iot"))
    done = runner.invoke(app, ["verify", str(bundle), "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["ok"] is True
    (bundle / "golden/expected/logits.bin").write_bytes(b"\0" * 160)
    done = runner.invoke(app, ["verify", str(bundle)])
    assert done.exit_code == 1 and "golden/expected/logits.bin" in done.output
    assert runner.invoke(app, ["verify", str(tmp_path / "nope")]).exit_code == 2


# Signing ----------------------------------------------------------------------------------------------


def test_signature_round_trip_and_failures(signed_bundles, keys, tmp_path):
    bundle = signed_bundles["iot"]
    assert verify_bundle(bundle, public_key=keys[1]).ok
    other_private, other_public = tmp_path / "other.key", tmp_path / "other.pub"
    generate_keypair(other_private, other_public)
    wrong = verify_bundle(bundle, public_key=other_public)
    assert [c.name for c in wrong.failures] == ["signature manifest.sig"]
    unsigned = Path(shutil.copytree(bundle, tmp_path / "unsigned"))
    (unsigned / "manifest.sig").unlink()
    assert "missing" in verify_bundle(unsigned, public_key=keys[1]).failures[0].detail
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(UsageError, match="not a PEM key"):
        verify_bundle(bundle, public_key=tmp_path / "junk.pub")


def test_keygen_command_writes_a_private_key_only_its_owner_reads(tmp_path):
    done = runner.invoke(app, ["keygen", str(tmp_path / "k.key")])
    assert done.exit_code == 0, done.output
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600
    assert (tmp_path / "k.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert runner.invoke(app, ["keygen", str(tmp_path / "k.key")]).exit_code == 2  # no silent overwrite


# Zip safety -------------------------------------------------------------------------------------------


def _zip_with(path: Path, name: str, data: bytes = b"x", mode: int = stat.S_IFREG | 0o644) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        zf.writestr(info, data)
    return path


@pytest.mark.parametrize(
    "name,mode,message",
    [
        ("../evil.txt", stat.S_IFREG | 0o644, "unsafe entry"),
        ("bundle/../../evil.txt", stat.S_IFREG | 0o644, "unsafe entry"),
        ("/tmp/evil.txt", stat.S_IFREG | 0o644, "unsafe entry"),
        ("bundle/link", stat.S_IFLNK | 0o777, "symbolic link"),
    ],
)
def test_unsafe_zip_entries_are_refused(tmp_path, name, mode, message):
    archive = _zip_with(tmp_path / "bad.zip", name, b"/etc/passwd", mode)
    with pytest.raises(UsageError, match=message):
        verify_bundle(archive)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_zip_limits_on_members_and_expanded_size(tmp_path, monkeypatch):
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(3):
            zf.writestr(f"b/{i}.bin", b"\0" * 100_000)
    monkeypatch.setattr(bundle_check, "MAX_MEMBERS", 2)
    with pytest.raises(UsageError, match="entries"):
        verify_bundle(archive)
    monkeypatch.setattr(bundle_check, "MAX_MEMBERS", 10)
    monkeypatch.setattr(bundle_check, "MAX_UNCOMPRESSED_BYTES", 150_000)
    with pytest.raises(UsageError, match="expands to more than"):
        verify_bundle(archive)


# Reproducible builds ------------------------------------------------------------------------------------


def test_two_builds_with_the_same_source_date_epoch_give_identical_archives(tmp_path):
    """Two CLI builds (run side by side) with different hash seeds and output folders; every format,
    the .ort included. (Separate processes: TorchScript numbers the classes it compiles per process,
    so a .ptl built after other models in one Python process names its class differently.)"""
    target = write_fast_target(tmp_path, "repro", ALL_FORMATS.replace("opset = 18", "opset = 18\nort_format = true"))
    builds = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgepack",
                "build",
                "--target",
                str(target),
                "--out",
                str(tmp_path / out),
                "--archive",
                "--no-budgets",
                "-q",
            ],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "SOURCE_DATE_EPOCH": EPOCH, "PYTHONHASHSEED": seed},
        )
        for out, seed in (("first", "1"), ("second-build-folder", "2"))
    ]
    for process in builds:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    first = tmp_path / "first/demo-digits/repro.zip"
    second = tmp_path / "second-build-folder/demo-digits/repro.zip"
    assert first.read_bytes() == second.read_bytes()
    names = zipfile.ZipFile(first).namelist()
    assert names == sorted(names) and "repro/report.json" not in names and "repro/report.html" not in names
    assert {
        "repro/demo-digits.ptl",
        "repro/demo-digits.onnx",
        "repro/demo-digits.ort",
        "repro/demo-digits.mlpackage/Manifest.json",
        "repro/manifest.json",
    } <= set(names)
    assert {i.date_time for i in zipfile.ZipFile(first).infolist()} == {(2023, 11, 14, 22, 13, 20)}
    manifest = json.loads(zipfile.ZipFile(first).read("repro/manifest.json"))
    assert manifest["provenance"]["build_time"] == "2023-11-14T22:13:20Z"
    assert verify_bundle(first).ok


# inspect and provenance ----------------------------------------------------------------------------------


def test_inspect_shows_provenance_and_latency(demo_reports):
    bundle = demo_reports["android"].bundle_dir
    done = CliRunner().invoke(app, ["inspect", bundle], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    manifest = read_manifest(Path(bundle) / "manifest.json")
    for text in (
        "provenance",
        manifest["model"]["source"]["weights_sha256"],
        "android.toml",
        "torch 2.",
        "edgepack.demo:make_model",
        "torchscript_lite",
        "bytecode_version 8",
        "NCHW",
    ):
        assert text in done.output, text
    summary = json.loads(CliRunner().invoke(app, ["inspect", bundle, "--json"]).output)
    assert summary["provenance"] == manifest["provenance"]
    assert all(a["latency_ms"]["p50"] > 0 for a in summary["artifacts"])  # from report.json


def test_git_state_records_the_commit_and_whether_the_checkout_differs(tmp_path):
    def git(*args):
        subprocess.run(
            ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t", *args],
            check=True,
            capture_output=True,
        )

    git("init", "-q")
    (tmp_path / "README").write_text("project\n")
    git("add", "README")
    git("commit", "-qm", "start")
    model = tmp_path / "net.py"
    model.write_text("x = 1\n")
    assert git_state(model)["dirty"] is True  # the model file is not committed
    git("add", "net.py")
    git("commit", "-qm", "net")
    state = git_state(model)
    head = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert state == {"commit": head, "dirty": False}
    model.write_text("x = 2\n")
    assert git_state(model)["dirty"] is True
    assert git_state(Path("/")) is None


def test_build_refuses_a_bad_signing_key_before_building(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    (tmp_path / "rsa.key").write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    (tmp_path / "enc.key").write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    for key, message in (
        (tmp_path / "missing.key", "Cannot read key file"),
        (tmp_path / "rsa.key", "not a PEM key"),
        (tmp_path / "enc.key", "is an encrypted private key"),
    ):
        done = runner.invoke(app, ["build", "--target", "iot", "--out", str(tmp_path / "dist"), "--sign-key", str(key)])
        assert done.exit_code == 2 and message in done.output, done.output
    assert not (tmp_path / "dist").exists()


def test_manifest_marks_dynamic_dimensions_and_records_a_user_models_source(tmp_path):
    """A user model from a file: dynamic batch on the input and, followed through, on the output."""
    from edgepack.inputs import parse_input_spec
    from edgepack.pipeline import BuildRequest, build

    target = write_fast_target(tmp_path, "onnx-only", '[formats.onnx]\nprecision = "fp32"\nopset = 18\n')
    models = Path(__file__).parent / "models.py"
    (report,) = build(
        BuildRequest(
            targets=[str(target)],
            model=f"{models}:make_small_linear",
            inputs=[parse_input_spec("x=N=2x6")],
            out_dir=tmp_path / "dist",
        )
    )
    assert report.ok, report.problems
    manifest = read_manifest(Path(report.bundle_dir) / "manifest.json")
    assert manifest["inputs"][0]["dynamic_axes"] == {"0": "N"} and manifest["inputs"][0]["layout"] is None
    assert manifest["outputs"] == [{"name": "output", "shape": [2, 2], "dtype": "float32", "dynamic_axes": {"0": "N"}}]
    source = manifest["provenance"]["source"]
    assert source["reference"].endswith("models.py:make_small_linear") and source["module_file"].endswith(
        "tests/models.py"
    )
    # No weights file: the version is the parameters' own hash, the same for the same weights, another for others.
    import torch

    from edgepack.bundle.manifest import _model_version
    from edgepack.load import LoadedModel

    from .models import make_small_linear

    version = manifest["model"]["version"]
    assert len(version) == 12 and int(version, 16) >= 0
    module = make_small_linear()
    loaded = LoadedModel(module=module, name="x", inputs=[], source={"weights_sha256": None})
    assert _model_version(loaded) == version
    with torch.no_grad():
        next(module.parameters()).add_(1.0)
    assert _model_version(loaded) != version
    git = manifest["provenance"]["git"]
    assert git is None or len(git["commit"]) == 40  # the tests run from a checkout or an unpacked sdist
    assert verify_bundle(Path(report.bundle_dir)).ok


def test_a_malformed_source_date_epoch_is_a_usage_error(tmp_path):
    done = runner.invoke(
        app, ["build", "--target", "iot", "--out", str(tmp_path)], env={"SOURCE_DATE_EPOCH": "yesterday"}
    )
    assert done.exit_code == 2 and "SOURCE_DATE_EPOCH" in done.output
