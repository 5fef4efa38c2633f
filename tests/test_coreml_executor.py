"""Tests for edgepack.coreml_executor, the NumPy reference executor for saved Core ML ML programs.

Each case converts a small PyTorch block with coremltools, saves the .mlpackage, runs the saved
package through the executor on random inputs and compares with eager PyTorch: shapes first,
then the max abs error against a tolerance that fits the program's precision.
Run with `-s` to see the measured errors.
"""

from __future__ import annotations

import copy
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgepack.formats.coreml import executor as coreml_executor
from edgepack.formats.coreml.executor import (
    UnsupportedOp,
    program_op_types,
    run_package,
    supported_op_types,
    unsupported_ops,
)
from edgepack.noise import quiet_converter

from .coreml_models import CausalAttention

with quiet_converter():
    import coremltools as ct
    import coremltools.optimize.coreml as cto
    from coremltools.converters.mil import Builder as mb

pytestmark = [
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),  # tracing the test blocks, expected
    pytest.mark.filterwarnings("ignore:Using padding='same'"),
]

# max abs error allowed, relative to max(1, max |expected|)
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


# --- models ----------------------------------------------------------------------------------


def _block(c_in: int, c_out: int, stride: int) -> nn.Module:
    """MobileNet-style depthwise + pointwise block (BatchNorm folded by the converter)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in),
        nn.BatchNorm2d(c_in),
        nn.ReLU6(),
        nn.Conv2d(c_in, c_out, 1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


def _convnet() -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        _block(8, 16, 2),
        _block(16, 16, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )
    for module in net.modules():  # non-trivial running stats, so the folded BatchNorm matters
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return net


class Dilated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, dilation=2, padding=2)
        self.b = nn.Conv2d(4, 4, (3, 2), padding="same")
        self.c = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        self.d = nn.Conv2d(4, 6, 3, stride=2, dilation=(1, 2), groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.d(self.c(self.b(self.a(x))))


class Conv1d3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 6, 3, stride=2, padding=1)
        self.t1 = nn.ConvTranspose1d(6, 2, 3, stride=2)
        self.c3 = nn.Conv3d(1, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.t1(F.max_pool1d(self.c1(x), 2))  # (1, 2, 15)
        vol = F.avg_pool3d(self.c3(x.reshape(1, 1, 4, 4, 4)), 2)  # (1, 3, 2, 2, 2)
        return torch.cat([seq.flatten(), vol.flatten()])


class Pools(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.max_pool2d(x, 3, 2, 1)
        b = F.avg_pool2d(a, 2, ceil_mode=True)
        c = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        d = F.adaptive_avg_pool2d(x, (2, 3))
        e = F.max_pool2d(x, 2, ceil_mode=True)
        return torch.cat([b.flatten(), c.flatten(), d.flatten(), e.flatten()])


class MHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.norm = nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.attn(x, x, x, need_weights=False)[0])


class Norms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.instance = nn.InstanceNorm2d(4, affine=True)
        self.group = nn.GroupNorm(2, 4)
        self.layer = nn.LayerNorm(8)
        for p in self.parameters():
            nn.init.normal_(p, 0.5, 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.group(self.instance(x)))


class BatchNormUnfolded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.bn.running_mean.uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2)
        nn.init.normal_(self.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * 2 - 1


class Embedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x)).mean(1) + F.one_hot(x[:, 0], 20).float()[:, :4]


class UpNearest(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.interpolate(x, scale_factor=2, mode="nearest")
        b = F.interpolate(x, size=(5, 7), mode="nearest")
        return torch.cat([a.flatten(), b.flatten()])


class UpBilinear(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        b = F.interpolate(x, size=(7, 9), mode="bilinear", align_corners=True)
        c = F.interpolate(x, scale_factor=(1.5, 2.5), mode="bilinear", align_corners=True)
        return torch.cat([a.flatten(), b.flatten(), c.flatten()])


class GeluSiluMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.gate, self.down = nn.Linear(8, 32), nn.Linear(8, 32), nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.up(x)) * F.silu(self.gate(x)) + F.gelu(self.gate(x), approximate="tanh")
        return self.down(h)


class Activations(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [
            F.relu(x),
            F.relu6(x * 4),
            F.leaky_relu(x, 0.1),
            torch.sigmoid(x),
            torch.tanh(x),
            torch.softmax(x, -1),
            F.hardswish(x * 3),
            F.hardsigmoid(x * 3),
            F.elu(x),
            F.softplus(x),
            F.mish(x),
            F.log_softmax(x, -1),
            F.prelu(x, torch.tensor([0.25])),
            torch.erf(x),
            F.softsign(x),
            x.clamp(-0.5, 0.5),
            torch.exp(x).sqrt(),
        ]
        return torch.stack(outs)


class LSTMs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.uni = nn.LSTM(6, 8, batch_first=True)
        self.bi = nn.LSTM(8, 4, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq, _ = self.uni(x)
        out, (h, c) = self.bi(seq)
        return out + h.sum(0, keepdim=True).transpose(0, 1).repeat(1, 1, 2) + c.mean()


class GRU(nn.Module):
    """PyTorch's GRU differs from Core ML's: the converter emits a while_loop with scatter."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(6, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


class RNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(6, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


class ConcatSplitSlice(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.split([2, 2], dim=1)
        c = torch.cat([b * 2, a[:, :, ::2].repeat(1, 1, 2, 1)], 1)
        d = c[:, 1:3].squeeze(0).unsqueeze(1).permute(0, 1, 3, 2).reshape(2, -1)
        return torch.cat([d, x[..., -1].reshape(2, -1), x.chunk(2, -1)[1].reshape(2, -1)], 1)


class Indexing(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = torch.tensor([[0, 2], [3, 1]]).unsqueeze(-1).expand(2, 2, 4)
        along = torch.gather(x, 1, idx)
        nd = x[torch.tensor([0, 1]), torch.tensor([2, 3])]
        scattered = x.clone()
        scattered[:, 1] = 0.0
        values, indices = x.topk(2, dim=-1)
        return torch.cat(
            [
                along.flatten(),
                nd.flatten(),
                scattered.flatten(),
                torch.cumsum(x, 1).flatten(),
                torch.flip(x, [1]).flatten(),
                torch.roll(x, 1, 2).flatten(),
                torch.triu(x).flatten(),
                values.flatten(),
                indices.float().flatten(),
                x.sort(-1)[0].flatten(),
            ]
        )


class Reductions(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [
                x.sum(1),
                x.mean(1),
                x.amax(1),
                x.amin(1),
                x.norm(dim=1),
                x.abs().sum(1),
                x.argmax(1).float(),
                x.logsumexp(1),
                x.var(1),
                torch.where(x > 0, x, -2 * x).sum(1),
            ]
        )


class ShuffleLRN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lrn = nn.LocalResponseNorm(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.pixel_shuffle(x, 2)
        return F.pixel_unshuffle(up * 2, 2) + self.lrn(x) + up.mean()


class TwoInTwoOut(nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.masked_fill(mask > 0.5, -1.0), torch.einsum("bij,bkj->bik", x, x)


# --- building packages -----------------------------------------------------------------------


@dataclass
class Case:
    make: Callable[[], nn.Module]
    inputs: dict[str, Callable[[], torch.Tensor]]
    precision: str = "fp32"
    target: str = "iOS16"
    must_contain: tuple[str, ...] = ()  # op types the case exists to cover
    outputs: tuple[str, ...] = ("y",)


def _randn(*shape: int) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(*shape)


CASES: dict[str, Case] = {
    "convnet_depthwise_pointwise": Case(_convnet, {"x": _randn(2, 3, 16, 16)}, must_contain=("conv", "clip", "linear")),
    "convnet_depthwise_pointwise_fp16": Case(_convnet, {"x": _randn(2, 3, 16, 16)}, "fp16"),
    "dilated_same_reflect_grouped_conv": Case(Dilated, {"x": _randn(1, 3, 14, 14)}, must_contain=("conv", "pad")),
    "conv_transpose": Case(
        lambda: nn.Sequential(
            nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(6, 2, 4, stride=2, padding=1, groups=2),
        ),
        {"x": _randn(1, 4, 5, 5)},
        must_contain=("conv_transpose", "crop"),
    ),
    "conv1d_conv3d": Case(
        Conv1d3d, {"x": _randn(1, 4, 16)}, must_contain=("conv", "conv_transpose", "max_pool", "avg_pool")
    ),
    "pooling_variants": Case(Pools, {"x": _randn(1, 3, 17, 17)}, must_contain=("max_pool", "avg_pool")),
    "multihead_attention": Case(MHA, {"x": _randn(2, 5, 16)}, must_contain=("matmul", "softmax", "layer_norm")),
    "multihead_attention_fp16": Case(MHA, {"x": _randn(2, 5, 16)}, "fp16"),
    "sdpa_causal_ios18": Case(
        CausalAttention, {"x": _randn(2, 5, 16)}, target="iOS18", must_contain=("scaled_dot_product_attention",)
    ),
    "instance_group_layer_norm": Case(Norms, {"x": _randn(2, 4, 3, 8)}, must_contain=("instance_norm", "layer_norm")),
    "batch_norm_unfolded": Case(BatchNormUnfolded, {"x": _randn(2, 4, 3, 3)}, must_contain=("batch_norm",)),
    "embedding_int_input": Case(
        Embedding, {"x": lambda: torch.randint(0, 20, (2, 6))}, must_contain=("gather", "one_hot")
    ),
    "upsample_nearest": Case(UpNearest, {"x": _randn(1, 2, 3, 4)}, must_contain=("upsample_nearest_neighbor",)),
    "upsample_bilinear": Case(UpBilinear, {"x": _randn(1, 2, 4, 4)}, must_contain=("upsample_bilinear",)),
    "upsample_bilinear_fp16": Case(UpBilinear, {"x": _randn(1, 2, 4, 4)}, "fp16"),
    "gelu_silu_mlp": Case(GeluSiluMLP, {"x": _randn(3, 8)}, must_contain=("gelu", "silu", "linear")),
    "gelu_silu_mlp_fp16": Case(GeluSiluMLP, {"x": _randn(3, 8)}, "fp16"),
    "activations": Case(
        Activations, {"x": _randn(3, 8)}, must_contain=("sigmoid_hard", "thresholded_relu", "elu", "softplus")
    ),
    "lstm_uni_and_bidirectional": Case(LSTMs, {"x": _randn(2, 5, 6)}, must_contain=("lstm",)),
    "lstm_fp16_ios17": Case(LSTMs, {"x": _randn(2, 5, 6)}, "fp16", "iOS17"),
    "gru_while_loop": Case(GRU, {"x": _randn(2, 5, 6)}, must_contain=("while_loop", "scatter")),
    "gru_while_loop_fp16": Case(GRU, {"x": _randn(2, 5, 6)}, "fp16"),
    "simple_rnn": Case(RNN, {"x": _randn(2, 5, 6)}, must_contain=("rnn",)),
    "concat_split_slice": Case(
        ConcatSplitSlice, {"x": _randn(1, 4, 4, 4)}, must_contain=("split", "slice_by_index", "tile")
    ),
    "gather_scatter_cumsum_topk": Case(
        Indexing, {"x": _randn(2, 4, 4)}, must_contain=("gather_along_axis", "gather_nd", "scatter", "cumsum", "topk")
    ),
    "reductions": Case(Reductions, {"x": _randn(3, 5)}, must_contain=("reduce_max", "reduce_argmax", "select")),
    "pixel_shuffle_lrn": Case(ShuffleLRN, {"x": _randn(1, 8, 3, 3)}, must_contain=("pixel_shuffle", "pixel_unshuffle")),
    "two_inputs_two_outputs": Case(
        TwoInTwoOut, {"x": _randn(2, 3, 4), "mask": lambda: torch.rand(2, 3, 4)}, outputs=("masked", "gram")
    ),
}


def _convert(
    model: nn.Module,
    examples: dict[str, torch.Tensor],
    path: Path,
    precision: str = "fp32",
    target: str = "iOS16",
    outputs: tuple[str, ...] = ("y",),
    io_dtype: type | None = None,
    compress: Callable | None = None,
) -> Path:
    """coremltools conversion as edgepack does it: traced module, fixed shapes, ML program.

    Traced with autograd on: under no_grad nn.MultiheadAttention takes a fused fast path that
    coremltools cannot convert.
    """
    with quiet_converter():
        traced = torch.jit.trace(model.eval(), tuple(examples.values()), check_trace=False)
        inputs = [
            ct.TensorType(
                name=name, shape=tuple(t.shape), dtype=np.int32 if t.dtype == torch.int64 else (io_dtype or np.float32)
            )
            for name, t in examples.items()
        ]
        mlmodel = ct.convert(
            traced,
            inputs=inputs,
            outputs=[ct.TensorType(name=n, dtype=io_dtype or np.float32) for n in outputs],
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, target),
            compute_precision={"fp32": ct.precision.FLOAT32, "fp16": ct.precision.FLOAT16}[precision],
        )
        if compress is not None:
            mlmodel = compress(mlmodel)
        mlmodel.save(str(path))
    return path


def _program_ops(package: Path) -> set[str]:
    return program_op_types(ct.utils.load_spec(str(package)))


def _eager(model: nn.Module, examples: dict[str, torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(*examples.values())
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _max_err(got: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(max abs error, the same relative to max(1, max |expected|))."""
    err = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))
    return err, err / max(1.0, float(np.max(np.abs(expected))))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@dataclass
class Built:
    model: nn.Module
    examples: dict[str, torch.Tensor]
    package: Path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("coreml_executor")


@pytest.fixture(scope="module")
def build(workdir: Path) -> Callable[[str], Built]:
    """Convert each case once per module; later tests (tampering) reuse the saved packages."""
    cache: dict[str, Built] = {}

    def get(name: str) -> Built:
        if name not in cache:
            case = CASES[name]
            torch.manual_seed(sum(map(ord, name)))
            model = case.make().eval()
            examples = {k: make() for k, make in case.inputs.items()}
            path = _convert(model, examples, workdir / f"{name}.mlpackage", case.precision, case.target, case.outputs)
            cache[name] = Built(model, examples, path)
        return cache[name]

    return get


# --- agreement with eager PyTorch ------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_package_matches_eager(name: str, build: Callable[[str], Built]) -> None:
    case, built = CASES[name], build(name)
    ops = _program_ops(built.package)
    assert set(case.must_contain) <= ops, f"the converter no longer emits {set(case.must_contain) - ops}"
    assert unsupported_ops(built.package) == []

    got = run_package(built.package, {k: v.numpy() for k, v in built.examples.items()})
    expected = _eager(built.model, built.examples)
    assert list(got) == list(case.outputs)
    errors = []
    for out_name, want in zip(case.outputs, expected):
        assert got[out_name].shape == want.shape, out_name
        assert got[out_name].dtype == np.float32
        errors.append(_max_err(got[out_name], want))
    worst_abs, worst_rel = max(e[0] for e in errors), max(e[1] for e in errors)
    print(f"\n[executor] {name:36s} {case.precision} {case.target}: max abs err {worst_abs:.2e} (rel {worst_rel:.2e})")
    assert worst_rel <= TOLERANCE[case.precision]


def test_fp16_program_rounds_every_op_to_fp16(workdir: Path) -> None:
    """x + 1e-4 for x in [1, 2): below half an fp16 ulp, so an fp16 program returns x rounded to fp16."""

    class AddTiny(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1e-4

    x = {"x": 1 + 0.9 * torch.rand(4, 16)}
    x_np = x["x"].numpy()
    fp16 = run_package(_convert(AddTiny(), x, workdir / "tiny16.mlpackage", "fp16"), {"x": x_np})["y"]
    fp32 = run_package(_convert(AddTiny(), x, workdir / "tiny32.mlpackage", "fp32"), {"x": x_np})["y"]
    np.testing.assert_array_equal(fp16, x_np.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(fp32, x_np + np.float32(1e-4), rtol=0, atol=1e-6)


def test_fp16_io_program(workdir: Path) -> None:
    """fp16 model inputs/outputs (iOS16+): fp32 feeds are cast to fp16, outputs come back as float16."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.GELU(), nn.Linear(6, 3)).eval()
    x = {"x": torch.randn(4, 8)}
    package = _convert(model, x, workdir / "io16.mlpackage", "fp16", io_dtype=np.float16)
    got = run_package(package, {"x": x["x"].numpy()})["y"]
    assert got.dtype == np.float16
    _, rel = _max_err(got, _eager(model, x)[0])
    assert rel <= TOLERANCE["fp16"]


class FlexibleSpatial(nn.Module):
    """Ops whose output size follows the input's: strided conv, transposed conv, pools, upsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.down(x))
        a = F.max_pool2d(y, 3, 2, ceil_mode=True)
        b = F.interpolate(F.avg_pool2d(y, 2), scale_factor=2, mode="nearest")
        c = F.interpolate(a, scale_factor=2, mode="bilinear", align_corners=False)
        return torch.cat([y.flatten(1), b.flatten(1), c.flatten(1)], 1)


def test_flexible_input_sizes_run_at_every_size(workdir: Path) -> None:
    """A program with flexible H and W declares symbolic sizes: the executor sizes outputs from the run."""
    torch.manual_seed(4)
    model = FlexibleSpatial().eval()
    with quiet_converter():
        traced = torch.jit.trace(model, torch.randn(1, 3, 12, 12))
        shape = ct.Shape([1, 3, ct.RangeDim(4, 64, default=12), ct.RangeDim(4, 64, default=12)])
        mlmodel = ct.convert(
            traced,
            inputs=[ct.TensorType(name="x", shape=shape)],
            outputs=[ct.TensorType(name="y")],
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS16,
            compute_precision=ct.precision.FLOAT32,
        )
        package = workdir / "flexible.mlpackage"
        mlmodel.save(str(package))
    assert {
        "conv",
        "conv_transpose",
        "max_pool",
        "avg_pool",
        "upsample_nearest_neighbor",
        "upsample_bilinear",
    } <= _program_ops(package)
    for size in [(12, 12), (8, 20), (17, 9)]:
        x = {"x": torch.randn(1, 3, *size)}
        got = run_package(package, {"x": x["x"].numpy()})["y"]
        expected = _eager(model, x)[0]
        assert got.shape == expected.shape, size
        assert _max_err(got, expected)[1] <= TOLERANCE["fp32"], size


# --- compressed weights ----------------------------------------------------------------------


def _compress_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 10),
    ).eval()


def _with_weights(model: nn.Module, transform: Callable[[np.ndarray], np.ndarray]) -> nn.Module:
    """The model with every conv/linear weight replaced by transform(weight): the dequantized expectation."""
    changed = copy.deepcopy(model)
    with torch.no_grad():
        for module in changed.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.copy_(torch.from_numpy(transform(module.weight.numpy()).astype(np.float32)))
    return changed


def _int8_symmetric(w: np.ndarray) -> np.ndarray:
    rows = w.reshape(w.shape[0], -1)
    scale = np.abs(rows).max(axis=1, keepdims=True) / 127
    return (np.clip(np.round(rows / scale), -127, 127) * scale).reshape(w.shape)


def _uniform_lut(w: np.ndarray, nbits: int = 6) -> np.ndarray:
    lut = np.linspace(w.min(), w.max(), 2**nbits)
    return lut[np.abs(w[..., None] - lut).argmin(axis=-1)]


def _magnitude_pruned(w: np.ndarray) -> np.ndarray:
    threshold = np.sort(np.abs(w).ravel())[w.size // 2 - 1]
    return np.where(np.abs(w) > threshold, w, 0)


# name: (target, op it must emit, dequantized-weights expectation, compression, min cosine vs float model)
# Pruning half the weights is not meant to stay close to the float model: no cosine bound there.
COMPRESSED = {
    "int8_linear_quantized_ios16": (
        "iOS16",
        "constexpr_affine_dequantize",
        _int8_symmetric,
        lambda m: cto.linear_quantize_weights(
            m, cto.OptimizationConfig(cto.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=0))
        ),
        0.999,
    ),
    "int8_linear_quantized_ios18": (
        "iOS18",
        "constexpr_blockwise_shift_scale",
        _int8_symmetric,
        lambda m: cto.linear_quantize_weights(
            m, cto.OptimizationConfig(cto.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=0))
        ),
        0.999,
    ),
    "palettized_6bit_ios16": (
        "iOS16",
        "constexpr_lut_to_dense",
        _uniform_lut,
        lambda m: cto.palettize_weights(
            m, cto.OptimizationConfig(cto.OpPalettizerConfig(mode="uniform", nbits=6, weight_threshold=0))
        ),
        0.99,
    ),
    "pruned_50pct_ios16": (
        "iOS16",
        "constexpr_sparse_to_dense",
        _magnitude_pruned,
        lambda m: cto.prune_weights(
            m, cto.OptimizationConfig(cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=0))
        ),
        None,
    ),
}


@pytest.mark.parametrize("name", list(COMPRESSED))
def test_compressed_weights_match_dequantized_expectation(name: str, workdir: Path) -> None:
    target, op_type, dequantized, compress, min_cosine = COMPRESSED[name]
    model = _compress_model()
    x = {"x": torch.randn(2, 3, 8, 8)}
    package = _convert(model, x, workdir / f"{name}.mlpackage", target=target, compress=compress)
    assert op_type in _program_ops(package)

    got = run_package(package, {"x": x["x"].numpy()})["y"]
    expected = _eager(_with_weights(model, dequantized), x)[0]
    err, rel = _max_err(got, expected)
    cosine = _cosine(got, _eager(model, x)[0])
    print(
        f"\n[executor] {name:36s} vs dequantized weights: max abs err {err:.2e} (rel {rel:.2e}); "
        f"cosine vs float model {cosine:.5f}"
    )
    assert got.shape == expected.shape
    assert rel <= TOLERANCE["fp32"]
    assert min_cosine is None or cosine >= min_cosine


# --- resample (torch grid_sample) ------------------------------------------------------------

GRID_SAMPLE_MODES = [
    (mode, padding, align_corners)
    for mode in ("bilinear", "nearest")
    for padding in ("zeros", "border", "reflection")
    for align_corners in (True, False)
]


def _grid_sample_name(mode: str, padding: str, align_corners: bool) -> str:
    return f"{mode}_{padding}_{'corners' if align_corners else 'edges'}"


class GridSamples(nn.Module):
    """Every grid_sample mode combination on one input and grid: one output each."""

    def forward(self, x: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(
            F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=align_corners)
            for mode, padding, align_corners in GRID_SAMPLE_MODES
        )


def _grid_sample_examples() -> dict[str, torch.Tensor]:
    """x 1x2x5x6 and a 1x4x3x2 grid, a third of it outside [-1, 1] (two corners far enough out to
    reflect twice), and no pixel position near a nearest-neighbour tie (k + 0.5) for either
    align_corners: rounding coordinates to fp16 moves them by < 0.005 pixels, and must not pick
    the other neighbour."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(1, 2, 5, 6, generator=generator)
    grid = torch.empty(1, 4, 3, 2).uniform_(-1.5, 1.5, generator=generator)
    grid[0, 0, 0], grid[0, 3, 2] = torch.tensor([-2.9, 2.7]), torch.tensor([3.3, -3.1])
    for size, coords in ((6, grid[..., 0]), (5, grid[..., 1])):
        for pixels in ((coords + 1) / 2 * (size - 1), (coords + 1) / 2 * size - 0.5):
            assert (pixels - pixels.floor() - 0.5).abs().min() > 0.01
    assert 0.25 < (grid.abs() > 1).float().mean() < 0.5
    return {"x": x, "grid": grid}


def _string_constants(package: Path) -> set[str]:
    spec = ct.utils.load_spec(str(package))
    function = spec.mlProgram.functions["main"]
    return {
        s
        for op in function.block_specializations[function.opset].operations
        if op.type == "const"
        for s in op.attributes["val"].immediateValue.tensor.strings.values
    }


@pytest.fixture(scope="module")
def grid_samples(workdir: Path) -> Callable[[str], Built]:
    """One package per precision holding every combination (two conversions instead of 24)."""
    cache: dict[str, Built] = {}

    def get(precision: str) -> Built:
        if precision not in cache:
            model, examples = GridSamples().eval(), _grid_sample_examples()
            outputs = tuple(_grid_sample_name(*modes) for modes in GRID_SAMPLE_MODES)
            package = _convert(
                model, examples, workdir / f"grid_samples_{precision}.mlpackage", precision, outputs=outputs
            )
            # torch's reflection is Core ML's reflection with align_corners, symmetric without.
            assert _program_ops(package) - {"const", "cast"} == {"resample"}
            assert {"constant", "border", "reflection", "symmetric", "bilinear", "nearest"} <= _string_constants(
                package
            )
            cache[precision] = Built(model, examples, package)
        return cache[precision]

    return get


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("modes", GRID_SAMPLE_MODES, ids=lambda modes: _grid_sample_name(*modes))
def test_resample_matches_grid_sample(modes: tuple, precision: str, grid_samples: Callable[[str], Built]) -> None:
    built = grid_samples(precision)
    name = _grid_sample_name(*modes)
    got = run_package(built.package, {k: v.numpy() for k, v in built.examples.items()})[name]
    expected = _eager(built.model, built.examples)[GRID_SAMPLE_MODES.index(modes)]
    assert got.shape == expected.shape == (1, 2, 4, 3)
    err, rel = _max_err(got, expected)
    print(f"\n[executor] resample {name:28s} {precision}: max abs err {err:.2e}")
    assert rel <= {"fp32": 1e-6, "fp16": TOLERANCE["fp16"]}[precision]


# The 1D examples in coremltools' resample docstring, |1, 2, 3| padded to each side, here sampled
# with nearest at unnormalized (pixel) positions -3 .. 5.
RESAMPLE_DOC_PADDING = {
    "constant": [0, 0, 0, 1, 2, 3, 0, 0, 0],
    "border": [1, 1, 1, 1, 2, 3, 3, 3, 3],
    "reflection": [2, 3, 2, 1, 2, 3, 2, 1, 2],
    "symmetric": [3, 2, 1, 1, 2, 3, 3, 2, 1],
}


def _positions(*xs: float, y: float = 0.0) -> np.ndarray:
    """resample coordinates (x, y) for a 1x1x1xN output."""
    return np.stack([np.array(xs, np.float32), np.full(len(xs), y, np.float32)], -1).reshape(1, 1, -1, 2)


def _run_resamples(variants: dict[str, dict], path: Path) -> dict[str, np.ndarray]:
    """One resample op per variant (keyword arguments over defaults) on the image |1, 2, 3|."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 1, 1, 3))], opset_version=ct.target.iOS16)
    def program(x):
        return tuple(
            mb.resample(x=x, name=name, **{"padding_value": 0.0, "align_corners": False, **options})
            for name, options in variants.items()
        )

    with quiet_converter():
        ct.convert(
            program,
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS16,
            compute_precision=ct.precision.FLOAT32,
        ).save(str(path))
    return run_package(path, {"x": np.array([1, 2, 3], np.float32).reshape(1, 1, 1, 3)})


def test_resample_modes_torch_never_emits_match_coremltools_docs(workdir: Path) -> None:
    """Padding modes against the docstring's examples, plus what only other frontends emit:
    unnormalized (pixel) and [0, 1] coordinates, a non-zero padding value."""
    pixels = _positions(*range(-3, 6))
    variants = {
        padding: {
            "coordinates": pixels,
            "sampling_mode": "nearest",
            "padding_mode": padding,
            "coordinates_mode": "unnormalized",
        }
        for padding in RESAMPLE_DOC_PADDING
    }
    # y = 0.5 is the middle of the one-pixel-high image in [0, 1] coordinates, either align_corners.
    variants |= {
        f"unit_{a}": {
            "coordinates": _positions(-0.25, 0.25, 1, 2.5, y=0.5),
            "sampling_mode": "bilinear",
            "padding_mode": "constant",
            "align_corners": a,
            "coordinates_mode": "normalized_zero_to_one",
        }
        for a in (True, False)
    }
    variants["pad_7"] = {
        "coordinates": _positions(-0.25, 0.25, 1, 2.5),
        "sampling_mode": "bilinear",
        "padding_mode": "constant",
        "padding_value": 7.0,
        "coordinates_mode": "unnormalized",
    }
    got = _run_resamples(variants, workdir / "resample_doc.mlpackage")

    for padding, padded in RESAMPLE_DOC_PADDING.items():
        np.testing.assert_array_equal(got[padding].ravel(), padded, err_msg=padding)
    # [0, 1] spans the corner pixels' centres (pixel positions 0 .. 2) with align_corners, their
    # outer edges (-0.5 .. 2.5) without; outside the image, bilinear mixes in the padding value.
    np.testing.assert_allclose(got["unit_True"].ravel(), [0.5, 1.5, 3, 0], atol=1e-6)
    np.testing.assert_allclose(got["unit_False"].ravel(), [0, 1.25, 1.5, 0], atol=1e-6)
    np.testing.assert_allclose(got["pad_7"].ravel(), [2.5, 1.25, 2, 5], atol=1e-6)


def test_resample_sampling_mode_it_does_not_know_is_unsupported_not_guessed(workdir: Path) -> None:
    bicubic = {
        "coordinates": _positions(0.5),
        "sampling_mode": "bicubic",
        "padding_mode": "border",
        "coordinates_mode": "unnormalized",
    }
    with pytest.raises(UnsupportedOp, match="resample sampling_mode 'bicubic'") as raised:
        _run_resamples({"bicubic": bicubic}, workdir / "resample_bicubic.mlpackage")
    assert raised.value.op_types == ["resample"]


# --- the check can fail ----------------------------------------------------------------------


def _blobs(package: Path) -> list[tuple[int, int]]:
    """(data offset, size in bytes) of every weight blob the program references."""
    weights = (package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").read_bytes()
    spec = ct.utils.load_spec(str(package))
    function = spec.mlProgram.functions["main"]
    found = []
    for op in function.block_specializations[function.opset].operations:
        value = op.attributes.get("val")
        if value is not None and value.WhichOneof("value") == "blobFileValue":
            # blob metadata: sentinel, dtype, size in bytes, data offset
            sentinel, _, size, offset = struct.unpack_from("<IIQQ", weights, value.blobFileValue.offset)
            assert sentinel == 0xDEADBEEF
            found.append((offset, size))
    return found


def test_altered_weight_bytes_are_caught(build: Callable[[str], Built], workdir: Path) -> None:
    built = build("convnet_depthwise_pointwise")
    feeds = {k: v.numpy() for k, v in built.examples.items()}
    expected = _eager(built.model, built.examples)[0]
    assert _max_err(run_package(built.package, feeds)["y"], expected)[1] <= TOLERANCE["fp32"]

    tampered = workdir / "tampered.mlpackage"
    shutil.copytree(built.package, tampered)
    offset, size = max(_blobs(tampered), key=lambda blob: blob[1])
    weight_file = tampered / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(weight_file.read_bytes())
    # Flip the sign bit of every fp32 weight in the largest blob. (Changing a handful of weights is
    # not enough to be sure: in this net some input channels of that conv are dead after ReLU6.)
    for byte in range(offset + 3, offset + size, 4):
        data[byte] ^= 0x80
    weight_file.write_bytes(bytes(data))

    err, rel = _max_err(run_package(tampered, feeds)["y"], expected)
    print(f"\n[executor] tampered weight.bin: max abs err {err:.2e} (rel {rel:.2e})")
    assert rel > 10 * TOLERANCE["fp32"]


def test_unknown_ops_raise_before_evaluating(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 2, 4, 4))], opset_version=ct.target.iOS16)
    def program(x):
        noise = mb.random_uniform(shape=np.array([1, 2, 4, 4], np.int32), low=0.0, high=1.0)
        return mb.space_to_batch(
            x=mb.add(x=x, y=noise), block_shape=np.array([2, 2], np.int32), paddings=np.zeros((2, 2), np.int32)
        )

    package = workdir / "unsupported.mlpackage"
    with quiet_converter():
        ct.convert(
            program,
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS16,
            compute_precision=ct.precision.FLOAT32,
        ).save(str(package))

    assert unsupported_ops(package) == ["random_uniform", "space_to_batch"]

    def must_not_run(op):
        raise AssertionError(f"evaluated {op.op_type} although the program has unsupported ops")

    monkeypatch.setattr(coreml_executor, "_evaluate", must_not_run)
    with pytest.raises(UnsupportedOp) as raised:
        run_package(package, {"x": np.zeros((1, 2, 4, 4), np.float32)})
    assert raised.value.op_types == ["random_uniform", "space_to_batch"]
    assert "space_to_batch" in str(raised.value)


# --- inputs and documented semantics ---------------------------------------------------------


def test_inputs_are_checked_and_cast(build: Callable[[str], Built]) -> None:
    built = build("embedding_int_input")
    tokens = built.examples["x"].numpy()  # int64: travels as int32, like Core ML
    assert run_package(built.package, {"x": tokens})["y"].shape == (2, 4)
    with pytest.raises(ValueError, match="missing"):
        run_package(built.package, {})
    with pytest.raises(ValueError, match="unknown"):
        run_package(built.package, {"x": tokens, "extra": tokens})
    with pytest.raises(ValueError, match="shape"):
        run_package(built.package, {"x": tokens[:, :3]})
    with pytest.raises(ValueError, match="integers"):
        run_package(built.package, {"x": tokens.astype(np.float32)})
    with pytest.raises(ValueError, match="range"):
        run_package(built.package, {"x": tokens + 2**40})


# Grid points from the docstring of coremltools' iOS15 resize_bilinear, for Xin = 2, input [0, 1].
RESIZE_DOC_GRIDS = {
    ("UNALIGN_CORNERS", 5): [0.0, 0.1, 0.5, 0.9, 1.0],
    ("STRICT_ALIGN_CORNERS", 5): [0.0, 0.25, 0.5, 0.75, 1.0],
    ("ALIGN_CORNERS", 5): [0.0, 0.25, 0.5, 0.75, 1.0],
    ("DEFAULT", 5): [0.0, 0.4, 0.8, 1.0, 1.0],
    ("OFFSET_CORNERS", 5): [0.1, 0.3, 0.5, 0.7, 0.9],
    ("UNALIGN_CORNERS", 6): [0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0],
    ("STRICT_ALIGN_CORNERS", 6): [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    ("DEFAULT", 6): [0.0, 1 / 3, 2 / 3, 1.0, 1.0, 1.0],
    ("OFFSET_CORNERS", 6): [1 / 12, 0.25, 5 / 12, 7 / 12, 0.75, 11 / 12],
}


def test_resize_bilinear_sampling_modes_match_coremltools_docs(workdir: Path) -> None:
    """resize_bilinear is emitted by other frontends, not torch: check it against the documented grids."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 1, 2))], opset_version=ct.target.iOS16)
    def program(x):
        return tuple(
            mb.resize_bilinear(
                x=x, target_size_height=1, target_size_width=size, sampling_mode=mode, name=f"{mode.lower()}_{size}"
            )
            for mode, size in RESIZE_DOC_GRIDS
        )

    package = workdir / "resize_modes.mlpackage"
    with quiet_converter():
        ct.convert(
            program,
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS16,
            compute_precision=ct.precision.FLOAT32,
        ).save(str(package))
    assert "resize_bilinear" in _program_ops(package)
    got = run_package(package, {"x": np.array([[[0.0, 1.0]]], np.float32)})
    for (mode, size), grid in RESIZE_DOC_GRIDS.items():
        np.testing.assert_allclose(got[f"{mode.lower()}_{size}"].ravel(), grid, atol=1e-6, err_msg=mode)


def test_supported_op_types_cover_the_converter_output() -> None:
    supported = set(supported_op_types())
    needed = {
        "conv",
        "conv_transpose",
        "batch_norm",
        "instance_norm",
        "layer_norm",
        "linear",
        "matmul",
        "einsum",
        "relu",
        "relu6",
        "leaky_relu",
        "gelu",
        "silu",
        "sigmoid",
        "tanh",
        "softmax",
        "sigmoid_hard",
        "max_pool",
        "avg_pool",
        "upsample_nearest_neighbor",
        "upsample_bilinear",
        "resize_bilinear",
        "resize_nearest_neighbor",
        "reshape",
        "transpose",
        "concat",
        "split",
        "slice_by_index",
        "slice_by_size",
        "squeeze",
        "expand_dims",
        "tile",
        "gather",
        "gather_along_axis",
        "gather_nd",
        "scatter",
        "scatter_nd",
        "scatter_along_axis",
        "reduce_mean",
        "select",
        "cast",
        "scaled_dot_product_attention",
        "lstm",
        "while_loop",
        "cond",
        "constexpr_affine_dequantize",
        "constexpr_lut_to_dense",
        "constexpr_sparse_to_dense",
        "constexpr_blockwise_shift_scale",
        "resample",
    }
    assert needed <= supported, needed - supported
    assert "random_uniform" not in supported  # nothing to compare a random op with


def test_coremltools_is_imported_without_scikit_learn_which_a_later_import_still_gets() -> None:
    """coremltools imports scikit-learn (0.8 s) only for converters edgepack never uses: hidden from that
    import, then importable as ever for the user's own code."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from edgepack.formats.coreml.executor import coremltools_module\n"
        "ct = coremltools_module()\n"
        "assert ct.__name__ == 'coremltools' and 'sklearn' not in sys.modules\n"
        "import sklearn\n"
        "print('sklearn', sklearn.__version__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("sklearn ")
