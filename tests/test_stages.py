"""Unit tests of the stages that need no converter: inputs, targets, comparison, bundles, loading, capture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgepack.bundle.files import sha256_of
from edgepack.bundle.staging import StagedBundle
from edgepack.capture.flatten import flatten_model
from edgepack.compare import compare_outputs, merge
from edgepack.errors import UsageError
from edgepack.formats import known_options
from edgepack.inputs import InputSpec, parse_input_spec, sample_inputs
from edgepack.load import LoadedModel, load_model
from edgepack.targets import load_target

from .models import TinyEncoderClassifier, make_small_linear

MODELS = Path(__file__).parent / "models.py"


# inputs -------------------------------------------------------------------------------------------


def test_input_spec_parsing():
    assert parse_input_spec("x=1x3x224x224") == InputSpec("x", (1, 3, 224, 224), "float32")
    assert parse_input_spec("ids=1x128:int64") == InputSpec("ids", (1, 128), "int64")
    assert parse_input_spec("ids=1x8:int32:5..9").value_range == (5, 9)


@pytest.mark.parametrize("text", ["x=1x0", "x=", "1x=2", "x=2:int64:9..3", "x=2:float32:0..3", "x=2:complex"])
def test_bad_input_specs_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_input_spec(text)


def test_sampled_integer_inputs_respect_ranges_and_embeddings():
    encoder = TinyEncoderClassifier(vocab=7)
    ids = sample_inputs([InputSpec("ids", (1, 500), "int64")], encoder, seed=0)["ids"]
    assert ids.dtype == torch.int64 and 0 <= int(ids.min()) and int(ids.max()) < 7
    ranged = sample_inputs([InputSpec("ids", (1, 500), "int64", (100, 103))], encoder, seed=0)["ids"]
    assert set(ranged.unique().tolist()) == {100, 101, 102}
    first, again = (sample_inputs([InputSpec("x", (2, 3))], encoder, seed=5)["x"] for _ in range(2))
    assert torch.equal(first, again)


# targets ------------------------------------------------------------------------------------------


def test_builtin_targets_load():
    ios = load_target("ios", known_options())
    assert [f.name for f in ios.formats] == ["coreml", "executorch", "onnx"]
    coreml = ios.formats[0]
    assert coreml.precision == "fp16" and coreml.tolerance.atol == 1e-2
    assert ios.formats[1].tolerance.atol == 1e-2  # executorch: the Core ML delegate's fp16 rung, like Core ML's
    assert ios.formats[2].tolerance.atol == 1e-4  # onnx: the target-wide default
    assert len(ios.sha256) == 64


@pytest.mark.parametrize(
    "text, message",
    [
        ('name = "t"\n[formats.onxx]\n', "Did you mean 'onnx'"),
        ('name = "t"\n[formats.onnx]\nopst = 18\n', "Did you mean 'opset'"),
        ('name = "t"\n', "names no formats"),
        ('name = "t"\n[smoke]\natol = "big"\n[formats.onnx]\n', "must be a number"),
        ('name = "t"\n[bench]\nthreads = 0\n[formats.onnx]\n', "threads >= 1"),
        ("name = [broken\n", "not valid TOML"),
    ],
)
def test_bad_target_files_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_target(str(path), known_options())


def test_missing_target_file(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_target(str(tmp_path / "nope.toml"), known_options())


# comparison ---------------------------------------------------------------------------------------


def test_shapes_are_compared_before_values():
    # np.allclose would broadcast (1, 10) against (10,) and call them equal.
    result = compare_outputs([np.zeros(10)], [np.zeros((1, 10))], 1e-4, 0, 0.99)
    assert not result.ok and "shape" in result.reason


def test_tolerance_and_cosine():
    ref = np.linspace(-1, 1, 50).astype(np.float32)
    assert compare_outputs([ref + 1e-6], [ref], 1e-5, 0, 0.9999).ok
    worse = compare_outputs([ref + 1e-2], [ref], 1e-5, 0, 0.9999)
    assert not worse.ok and worse.max_abs_err == pytest.approx(1e-2, rel=1e-3)
    flipped = compare_outputs([-ref], [ref], 10.0, 0, 0.9)
    assert not flipped.ok and "cosine" in flipped.reason


def test_nan_where_reference_is_finite_fails():
    assert not compare_outputs([np.array([np.nan, 1.0])], [np.array([0.0, 1.0])], 1, 1, 0).ok


def test_merge_reports_the_first_failure_and_the_worst_figures():
    good = compare_outputs([np.ones(3)], [np.ones(3)], 1e-4, 0, 0.99, label="a")
    bad = compare_outputs([np.ones(3) * 2], [np.ones(3)], 1e-4, 0, 0.99, label="b")
    verdict = merge([good, bad, bad])
    assert not verdict.ok and verdict.reason.startswith("b:") and "2 more" not in verdict.reason
    assert "1 more of 3" in verdict.reason and verdict.max_abs_err == 1.0


# bundles ------------------------------------------------------------------------------------------


def test_a_crash_mid_build_leaves_nothing_behind(tmp_path):
    staged = StagedBundle(tmp_path, "m", "ios")
    (staged.dir / "half.onnx").write_bytes(b"partial")
    staged.discard()
    assert list((tmp_path / "m").iterdir()) == []


def test_commit_replaces_the_previous_bundle_atomically(tmp_path):
    for content in ("first", "second"):
        staged = StagedBundle(tmp_path, "m", "ios")
        (staged.dir / "file").write_text(content)
        final = staged.commit(ok=True)
    assert (final / "file").read_text() == "second"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["ios"]


def test_folder_hash_covers_names_and_contents(tmp_path):
    folder = tmp_path / "pkg"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a").write_bytes(b"1")
    first = sha256_of(folder)
    (folder / "sub" / "a").rename(folder / "sub" / "b")
    assert sha256_of(folder) != first


# loading ------------------------------------------------------------------------------------------


def test_loading_a_factory_from_a_file_with_a_checkpoint_dict(tmp_path):
    weights = tmp_path / "ckpt.pt"
    reference = make_small_linear()
    torch.save({"model_state_dict": reference.state_dict(), "epoch": 3}, weights)
    loaded = load_model(f"{MODELS}:make_small_linear", [InputSpec("x", (1, 6))], weights)
    assert not loaded.module.training
    assert loaded.source["weights_sha256"] and loaded.name == "sequential"
    x = torch.randn(1, 6)
    assert torch.equal(loaded.module(x), reference(x))


def test_loading_a_module_by_dotted_path(tmp_path, monkeypatch):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(
        "import torch\nclass Net(torch.nn.Module):\n    def forward(self, x):\n        return x * 2\n"
    )
    loaded = load_model("mypkg.nets:Net", [InputSpec("x", (2,))], search_dir=tmp_path)
    assert loaded.name == "net"


def test_duplicate_input_names_are_rejected():
    with pytest.raises(UsageError, match="given twice"):
        load_model(f"{MODELS}:make_small_linear", [InputSpec("x", (1, 6)), InputSpec("x", (1, 6))])


def test_demo_with_inputs_is_rejected():
    with pytest.raises(UsageError, match="need --model"):
        load_model(None, [InputSpec("x", (1, 6))])


# capture ------------------------------------------------------------------------------------------


def test_too_many_inputs_for_forward_is_explained():
    loaded = LoadedModel("m", make_small_linear(), [InputSpec("a", (1, 6)), InputSpec("b", (1, 6))], {})
    with pytest.raises(UsageError, match="takes 1 positional input"):
        flatten_model(loaded, {"a": torch.zeros(1, 6), "b": torch.zeros(1, 6)})


def test_non_tensor_outputs_are_explained():
    class Texty(torch.nn.Module):
        def forward(self, x):
            return {"logits": x, "label": "cat"}

    loaded = LoadedModel("m", Texty(), [InputSpec("x", (1, 2))], {})
    with pytest.raises(UsageError, match="contains a str"):
        flatten_model(loaded, {"x": torch.zeros(1, 2)})


def test_output_names_never_clash_with_inputs():
    class Echo(torch.nn.Module):
        def forward(self, x):
            return {"x": x + 1, "1st": x}

    loaded = LoadedModel("m", Echo(), [InputSpec("x", (1, 2))], {})
    _, names = flatten_model(loaded, {"x": torch.zeros(1, 2)})
    assert names == ["x_1", "output_1st"]
    json.dumps(names)


def test_native_stderr_is_kept_out_of_the_console_only_inside_the_block(capfd):
    import ctypes

    from edgepack.noise import native_stderr_quiet

    libc = ctypes.CDLL(None)
    with native_stderr_quiet():
        libc.write(2, b"from C++\n", 9)
    libc.write(2, b"after\n", 6)
    assert capfd.readouterr().err == "after\n"


def test_a_format_that_could_not_be_built_is_not_called_a_failed_smoke_test():
    from edgepack.report import ArtifactReport
    from edgepack.smoke import FAILED, SmokeResult

    unbuilt, built = ArtifactReport("onnx", "fp32"), ArtifactReport("coreml", "fp32", path="m.mlpackage")
    unbuilt.smoke = SmokeResult(FAILED, "emitting failed: no ONNX function for linalg_qr")
    built.smoke = SmokeResult(FAILED, "2 inputs outside tolerance")
    assert unbuilt.problems(strict=False) == ["onnx: emitting failed: no ONNX function for linalg_qr"]
    assert built.problems(strict=False) == ["coreml: smoke test failed: 2 inputs outside tolerance"]


def test_a_partial_build_with_nothing_left_names_each_formats_failure():
    from edgepack.report import ArtifactReport, BuildReport
    from edgepack.smoke import FAILED, SmokeResult

    lite, onnx = ArtifactReport("torchscript_lite", "fp32"), ArtifactReport("onnx", "fp32")
    lite.smoke, onnx.smoke = SmokeResult(FAILED, "emitting failed: A"), SmokeResult(FAILED, "emitting failed: B")
    report = BuildReport("android", "m", "dist/m/android", [lite, onnx], {}, None, 1, allow_partial=True)
    assert report.problems == [
        "torchscript_lite: emitting failed: A",
        "onnx: emitting failed: B",
        "no artifact could be built",
    ]
