"""The .ptl against the app's lite runtime (pytorch_android_lite 1.13.1): its operator table, the operator
rewrites that make transformer programs loadable there, and the check that fails a .ptl it cannot load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgepack.bundle.manifest import schema_problems
from edgepack.capture.ladder import capture
from edgepack.errors import UsageError
from edgepack.formats import FORMATS
from edgepack.formats.torchscript_lite import format as lite_format
from edgepack.formats.torchscript_lite import rewrites
from edgepack.formats.torchscript_lite.runtime_ops import (
    DEFAULT_RUNTIME,
    check_program,
    load_table,
    program_operators,
    table_from_json,
)
from edgepack.formats.torchscript_lite.runtimes import derive
from edgepack.inputs import InputSpec, parse_input_spec, sample_inputs
from edgepack.load import LoadedModel
from edgepack.pipeline import BuildRequest, build
from edgepack.smoke import smoke_test
from edgepack.targets import Budgets, FormatSettings, Tolerance

from .conftest import write_fast_target

HERE = Path(__file__).resolve()
TABLE_FILE = Path(derive.__file__).with_name("pytorch_lite_1.13.1.json")
SDPA = "aten::scaled_dot_product_attention"


def settings(precision: str = "fp32", **options) -> FormatSettings:
    return FormatSettings(
        "torchscript_lite", precision, Tolerance(1e-4, 1e-4, 0.9999), Budgets(), {"runtime": DEFAULT_RUNTIME, **options}
    )


class Encoder(nn.Module):
    """Token ids -> nn.TransformerEncoder (2 post-norm layers, as most users write it) -> mean-pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(ids)).mean(dim=1)  # ENCODER_LINE


class HFStyleAttention(nn.Module):
    """Hugging Face's SDPA attention: separate projections, F.scaled_dot_product_attention with the padding
    mask as an additive float mask (mask="float"), a boolean mask ("bool"), causal ("causal") or grouped
    key/value heads ("gqa")."""

    def __init__(self, mask: str, width: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.mask, self.heads = mask, heads
        kv_heads = heads // 2 if mask == "gqa" else heads
        self.q = nn.Linear(width, width)
        self.k, self.v = nn.Linear(width, kv_heads * width // heads), nn.Linear(width, kv_heads * width // heads)
        self.o = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        q = self.q(x).view(b, t, self.heads, -1).transpose(1, 2)
        k = self.k(x).view(b, t, -1, w // self.heads).transpose(1, 2)
        v = self.v(x).view(b, t, -1, w // self.heads).transpose(1, 2)
        if self.mask == "causal":
            context = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.mask == "gqa":
            context = F.scaled_dot_product_attention(q, k, v, enable_gqa=True, scale=0.25)
        elif self.mask == "bool":
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask[:, None, None, :].bool())
        else:
            additive = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=additive)
        return self.o(context.transpose(1, 2).reshape(b, t, w))


class TinyViT(nn.Module):
    """A ViT as vision transformers are built: conv patch embedding, class token, positions, pre-norm GELU
    nn.TransformerEncoder, head on the class token."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, 32, kernel_size=8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, 32))
        self.positions = nn.Parameter(torch.randn(1, 17, 32))
        layer = nn.TransformerEncoderLayer(32, 4, 64, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(image).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.positions
        return self.head(self.encoder(tokens)[:, 0])


class RMSNormNet(nn.Module):
    """LLaMA-style RMSNorm (aten::rms_norm, torch 2.4+) and a multi-dimension squeeze (squeeze.dims, 2.0+)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.proj = nn.RMSNorm(16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x)).unsqueeze(1).unsqueeze(3).squeeze((1, 3))


class NewerOperatorNet(nn.Module):
    """torch.nonzero_static (torch 2.1+): no lite runtime has it and edgepack has no rewrite for it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.nonzero_static(x > 0, size=4)  # NEWER_LINE
        return positions.to(x.dtype).sum(dim=0) + x.sum()


def line_of(marker: str) -> str:
    number = next(i for i, line in enumerate(HERE.read_text().splitlines(), 1) if line.rstrip().endswith(marker))
    return f"{HERE}:{number}"


def captured_model(module: nn.Module, specs: list[InputSpec], samples: list[dict] | None = None):
    torch.manual_seed(0)
    module = module.eval()
    loaded = LoadedModel(type(module).__name__.lower(), module, specs, {"kind": "test"})
    return capture(loaded, samples or [sample_inputs(specs, module, seed) for seed in range(3)])


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return captured_model(Encoder(), [InputSpec("ids", (1, 12), dtype="int64", value_range=(0, 100))])


def emit_and_smoke(captured, path: Path, precision: str = "fp32"):
    fmt = FORMATS["torchscript_lite"]
    emitted = fmt.emit(captured, settings(precision), path)
    return emitted, smoke_test(fmt, emitted, captured, settings(precision), threads=1)


# The table ------------------------------------------------------------------------------------------


def test_table_is_the_1_13_1_runtime_derived_from_its_wheel():
    table = load_table("pytorch_android_lite 1.13.1")
    data = json.loads(TABLE_FILE.read_text())
    assert data["source"]["sha256"] == derive.SOURCES[data["source"]["wheel"]]
    assert data["counts"]["operators"] == len(table.operators) > 3000
    assert SDPA not in table.operators  # torch 2.0+
    assert table.arguments("aten::_scaled_dot_product_attention") == 7  # the private 1.13 op, another signature
    assert table.arguments("aten::linear") == 3 and table.arguments("quantized::linear_dynamic") == 3
    assert table.arguments("prim::NumToTensor.Scalar") == 1 and table.arguments("aten::size.int") == 2
    # JIT operators registered as "...) ->str" (no space; scripted nn.TransformerEncoder calls it)
    assert table.arguments("aten::add.str") == 2 and table.arguments("quantized::matmul") == 4
    assert load_table("LibTorch-Lite 1.13.0.1").operators == table.operators
    # String defaults are escaped inside the declarations' JSON strings (str mode=\"constant\"): read whole, a
    # schema keeps every argument after them (F.pad with a value; conv2d with padding="same").
    assert all(") ->" in op["schema"] or ")->" in op["schema"] for op in data["operators"].values())
    assert table.arguments("aten::pad") == 4 and table.arguments("aten::conv2d.padding") == 7


def test_schema_parser_counts_arguments_and_defaults():
    assert derive.parse_schema("aten::add.Tensor(Tensor self, Tensor other, *, Scalar alpha=1) -> Tensor") == (
        "aten::add.Tensor",
        3,
        1,
    )
    assert derive.parse_schema(
        "aten::max_pool2d(Tensor self, int[2] kernel_size, int[2] stride=[], int[2] padding=0, "
        "int[2] dilation=1, bool ceil_mode=False) -> Tensor"
    ) == ("aten::max_pool2d", 6, 4)
    assert derive.parse_schema("aten::gelu(Tensor self, *, str approximate='none') -> Tensor") == ("aten::gelu", 2, 1)
    assert derive.parse_schema("prim::TupleUnpack(Any tup) -> ...") == ("prim::TupleUnpack", 1, 0)


def test_an_unknown_runtime_is_a_usage_error_with_a_suggestion():
    with pytest.raises(UsageError, match="pytorch_android_lite 1.13.1"):
        FORMATS["torchscript_lite"].validate(settings(runtime="pytorch_android_lite 1.13"))


# The rewrite ----------------------------------------------------------------------------------------


def test_transformer_encoder_ptl_runs_on_the_1_13_1_runtime_and_matches_eager(encoder, tmp_path):
    before = str(encoder.scripted.graph)
    emitted, smoke = emit_and_smoke(encoder, tmp_path / "encoder.ptl")
    assert smoke.status == "passed", smoke.reason
    assert smoke.max_abs_err < 1e-5
    check = emitted.requirements["runtime_check"]
    assert emitted.requirements["runtime"] == check["runtime"] == "pytorch_android_lite 1.13.1"
    assert check["missing"] == [] and check["bytecode_version"] == 8
    used = program_operators(emitted.path)
    assert check["operators_checked"] == len(used) and SDPA not in used
    table = load_table()
    assert all(table.arguments(op) is not None and passed <= table.arguments(op) for op, passed in used.items())
    assert [r["op"] for r in emitted.requirements["rewrites"]] == [SDPA, SDPA]  # one per layer
    assert {r["source"] for r in emitted.requirements["rewrites"]} == {line_of("# ENCODER_LINE")}
    assert any("rewritten for the app runtime" in note for note in emitted.notes)
    assert str(encoder.scripted.graph) == before  # the capture ONNX and Core ML convert is untouched


def test_without_the_rewrite_the_encoder_ptl_fails_naming_the_operator_and_line(encoder, tmp_path, monkeypatch):
    monkeypatch.setattr(rewrites, "RULES", {})
    emitted, smoke = emit_and_smoke(encoder, tmp_path / "encoder.ptl")
    assert smoke.status == "failed"
    assert f"cannot run {SDPA} (produced at {line_of('# ENCODER_LINE')})" in smoke.reason
    assert emitted.requirements["runtime_check"]["missing"][0]["operator"] == SDPA


@pytest.mark.parametrize("mask", ["float", "bool", "causal", "gqa"])
def test_hf_style_attention_is_rewritten_and_matches_eager(mask, tmp_path):
    specs = [InputSpec("x", (2, 10, 32)), InputSpec("attention_mask", (2, 10), dtype="int64", value_range=(0, 2))]
    module = HFStyleAttention(mask)
    samples = []
    for seed in range(3):
        sample = sample_inputs(specs, module, seed)
        sample["attention_mask"] = torch.tensor([[1] * 10, [1] * (6 + seed) + [0] * (4 - seed)])  # right padding
        samples.append(sample)
    captured = captured_model(module, specs, samples)
    emitted, smoke = emit_and_smoke(captured, tmp_path / f"{mask}.ptl")
    assert smoke.status == "passed", smoke.reason
    assert emitted.requirements["runtime_check"]["missing"] == []
    assert [r["op"] for r in emitted.requirements["rewrites"]] == [SDPA]


def test_vit_style_ptl_is_rewritten_and_matches_eager(tmp_path):
    captured = captured_model(TinyViT(), [InputSpec("image", (1, 3, 32, 32))])
    emitted, smoke = emit_and_smoke(captured, tmp_path / "vit.ptl")
    assert smoke.status == "passed", smoke.reason
    assert emitted.requirements["runtime_check"]["missing"] == []
    assert [r["op"] for r in emitted.requirements["rewrites"]] == [SDPA, SDPA]


@pytest.mark.parametrize("kind", ["bool", "float -inf", "bool and causal"])
def test_rewritten_attention_zeroes_fully_masked_rows_as_eager_does(kind):
    q, k, v = torch.randn(3, 1, 2, 4, 8).unbind(0)
    keep = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    keep[..., 1, :] = False  # query 1 sees no key
    if kind == "bool and causal":
        keep[..., 2, :3] = False  # query 2 only key 3, which causality hides
    mask = keep if kind.startswith("bool") else torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    causal = kind == "bool and causal"
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    got = rewrites.scaled_dot_product_attention(q, k, v, mask, causal)
    assert not got.isnan().any() and torch.allclose(got, expected, atol=1e-6)


def test_rms_norm_and_squeeze_dims_are_rewritten(tmp_path):
    captured = captured_model(RMSNormNet(), [InputSpec("x", (2, 5, 16))])
    emitted, smoke = emit_and_smoke(captured, tmp_path / "rms.ptl")
    assert smoke.status == "passed", smoke.reason
    assert {r["op"] for r in emitted.requirements["rewrites"]} == {"aten::rms_norm", "aten::squeeze.dims"}
    assert emitted.requirements["runtime_check"]["missing"] == []


def test_int8_dynamic_encoder_is_rewritten_too(encoder, tmp_path):
    emitted, smoke = emit_and_smoke(encoder, tmp_path / "encoder.ptl", "int8-dynamic")
    assert smoke.status == "passed", smoke.reason
    assert emitted.requirements["runtime_check"]["missing"] == [] and emitted.requirements["rewrites"]


# The check can fail ---------------------------------------------------------------------------------


def test_an_operator_newer_than_the_runtime_without_rewrite_fails_with_operator_line_and_advice(tmp_path):
    captured = captured_model(NewerOperatorNet(), [InputSpec("x", (6,))])
    emitted, smoke = emit_and_smoke(captured, tmp_path / "newer.ptl")
    assert smoke.status == "failed"
    assert "structural check failed" in smoke.reason
    assert f"cannot run aten::nonzero_static (produced at {line_of('# NEWER_LINE')})" in smoke.reason
    assert "edgepack has no rewrite for it" in smoke.reason and "ExecuTorch" in smoke.reason
    (missing,) = emitted.requirements["runtime_check"]["missing"]
    assert missing["operator"] == "aten::nonzero_static" and missing["runtime_arguments"] is None


def test_a_hand_edited_table_without_an_operator_fails_the_check(encoder, tmp_path, monkeypatch):
    data = json.loads(TABLE_FILE.read_text())
    del data["operators"]["aten::layer_norm"]
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    table = table_from_json(DEFAULT_RUNTIME, edited.read_text())
    monkeypatch.setattr(lite_format, "load_table", lambda runtime: table)
    emitted, smoke = emit_and_smoke(encoder, tmp_path / "encoder.ptl")
    assert smoke.status == "failed" and "cannot run aten::layer_norm" in smoke.reason
    assert [m["operator"] for m in emitted.requirements["runtime_check"]["missing"]] == ["aten::layer_norm"]
    # The same saved program passes against the shipped table: only the edit made it fail.
    assert check_program(emitted.path, load_table()).ok


def test_a_schema_with_fewer_arguments_than_the_program_passes_fails(encoder, tmp_path):
    emitted, _ = emit_and_smoke(encoder, tmp_path / "encoder.ptl")
    passed = program_operators(emitted.path)["aten::layer_norm"]
    table = load_table()
    narrower = type(table)(table.runtime, {**table.operators, "aten::layer_norm": {"arguments": passed - 1}})
    (missing,) = check_program(emitted.path, narrower).missing
    assert missing.operator == "aten::layer_norm" and missing.runtime_arguments == passed - 1


# Through a build --------------------------------------------------------------------------------------


def test_build_records_the_runtime_check_and_rewrites_in_report_and_manifest(tmp_path):
    formats = '[formats.torchscript_lite]\nprecision = "fp32"\nruntime = "pytorch_android_lite 1.13.1"\n'
    target = write_fast_target(tmp_path, "phone", formats)
    (report,) = build(
        BuildRequest(
            targets=[str(target)],
            model="tests.test_ptl_runtime:Encoder",
            inputs=[parse_input_spec("ids=1xSEQ=12:int64:0..100")],
            out_dir=tmp_path / "dist",
            search_dir=HERE.parent.parent,
        )
    )
    assert report.ok, report.to_markdown()
    manifest = json.loads((Path(report.bundle_dir) / "manifest.json").read_text())
    (artifact,) = manifest["artifacts"]
    requirements = artifact["requirements"]
    assert requirements["runtime"] == "pytorch_android_lite 1.13.1"
    assert requirements["runtime_check"]["missing"] == [] and requirements["runtime_check"]["operators_checked"] > 10
    assert {r["op"] for r in requirements["rewrites"]} == {SDPA}
    assert "rewritten for the app runtime" in report.to_markdown()
    assert schema_problems(manifest) == []
    del requirements["runtime_check"]["missing"]
    assert any("missing" in problem for problem in schema_problems(manifest))  # the schema holds the check's shape


@pytest.mark.parametrize("version", [4, 6])
def test_backported_programs_are_checked_too(encoder, tmp_path, version):
    """Bytecode before 6 records no argument counts: the program passes every argument of the writer's schema."""
    fmt = FORMATS["torchscript_lite"]
    emitted = fmt.emit(encoder, settings(bytecode_version=version), tmp_path / f"v{version}.ptl")
    check = emitted.requirements["runtime_check"]
    assert check["bytecode_version"] == version and check["missing"] == [] and check["operators_checked"] > 10
    assert program_operators(emitted.path)["aten::linear"] == 3
