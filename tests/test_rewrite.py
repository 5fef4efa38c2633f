"""The device-agnostic pass (edgepack.rewrite), without a GPU.

A GPU trace is imitated by tracing on the CPU and then editing the trace's Device literals to
"cuda:0" with the graph API, before the module ever runs (a module that has run does not see
later graph edits). On this CPU-only build such a module fails as soon as it places a tensor on
cuda:0, exactly as it would on a phone. Tensor constants cannot be put on cuda here; that they
move with the input is shown by running on the `meta` device instead.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.jit.mobile as mobile
from torch import nn

from edgepack.capture.devices import (
    eager_prepass,
    fx_device_kwargs,
    kept_devices,
    make_device_agnostic,
    pinned_devices,
    runs_on_meta,
)
from edgepack.noise import quiet_converter

from . import gpu_imitation
from .gpu_imitation import CUDA, walk

THIS_FILE = Path(__file__).name


# helpers ------------------------------------------------------------------------------------------


def trace(model: nn.Module, *example: torch.Tensor) -> torch.jit.ScriptModule:
    """As edgepack.capture does: no grad, no check run (so the graphs can still be edited)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(model.eval(), example, check_trace=False)


def pin(module: torch.jit.ScriptModule, device: str = CUDA, keep_line: int | None = None) -> torch.jit.ScriptModule:
    """gpu_imitation.pin, keeping the literals recorded on `keep_line` of this file."""
    return gpu_imitation.pin(module, device, None if keep_line is None else f"{THIS_FILE}({keep_line})")


def line_of(text: str) -> int:
    """The line of this file that contains `text` (to find a rewrite's reported source)."""
    lines = Path(__file__).read_text().splitlines()
    return next(number for number, line in enumerate(lines, start=1) if text in line)


def assert_matches_eager(module, model: nn.Module, *inputs: torch.Tensor) -> None:
    with torch.no_grad():
        got, want = module(*inputs), model(*inputs)
    got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape  # allclose broadcasts: compare shapes first
        assert torch.allclose(g, w, atol=1e-6, rtol=0)


def fails_on_cpu(module: torch.jit.ScriptModule, *inputs: torch.Tensor) -> str:
    """Run a fresh copy: a scripted submodule that ran during tracing caches a plan without our edits."""
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    with pytest.raises(Exception) as caught, torch.no_grad():
        torch.jit.load(buffer)(*inputs)
    return str(caught.value)


def kinds(rewrites) -> list[str]:
    return [r.kind for r in rewrites]


def save_lite(module: torch.jit.ScriptModule, path: Path) -> Path:
    """The lite format's passes: freeze, remove dropout, save for the lite interpreter."""
    frozen = torch.jit.freeze(module.eval())
    torch._C._jit_pass_remove_dropout(frozen._c)
    frozen._save_for_lite_interpreter(str(path))
    return path


# models -------------------------------------------------------------------------------------------


class Factories(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        base = torch.zeros(n, 4, device=x.device) + torch.ones(4, device=x.device)
        base = base + torch.full((1, 4), 0.5, device=x.device) + torch.arange(4, device=x.device)
        base = base + torch.eye(4, device=x.device)[0] + torch.linspace(0, 1, 4, device=x.device)
        empty = torch.empty(n, 4, device=x.device).fill_(2.0)  # empty: needs a device too
        return self.lin(x) + base * empty


class ToWeightDevice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.weight.device) @ self.weight


class TensorConstants(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        placed = torch.tensor([1.0, 2.0, 3.0, 4.0], device=x.device)
        unplaced = torch.tensor([0.5, -0.5, 0.25, -0.25])  # default device: a constant on the CPU
        return x * placed + unplaced + x * torch.tensor(3.0)  # 0-dim: mixes with any device


class PlainAttribute(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.norm = nn.BatchNorm1d(4)  # has real buffers: they must not be reported
        self.scale = torch.tensor([1.0, 2.0, 3.0, 4.0])  # neither parameter nor buffer
        self.anchors = [torch.ones(4)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.lin(x) * self.scale + self.anchors[0])


class ConstantMasks(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        picked = x[:, torch.tensor([True, False, True, True])]
        causal = torch.tril(torch.ones(4, 4, device=x.device)).bool()
        scores = (x.unsqueeze(-1) * x.unsqueeze(-2)).masked_fill(~causal, 0.0)
        return picked, scores


class MaskAttribute(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.keep = torch.tensor([True, False, True, True])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.keep] + x.masked_fill(self.keep, 0.0)[:, :3]


class Inner(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + torch.ones(h.shape[-1], device=h.device)


class Middle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()
        self.lin = nn.Linear(4, 4)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.inner(self.lin(h)) * torch.arange(4, device=h.device)


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.middle = Middle()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.middle(y) + x.sum()  # the submodule is called with the *second* input


class Branchy(nn.Module):
    """Scripted: data-dependent branches that create tensors, and a device taken from a parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() > 0):
            bias = torch.ones(x.shape[-1], device=torch.device("cpu"))
        else:
            bias = torch.full([x.shape[-1]], 2.0, device=self.w.device)
        for _ in range(2):
            bias = bias + torch.zeros(x.shape[-1], device=torch.device("cpu"))
        return x * bias + self.w


class Hybrid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.branchy = torch.jit.script(Branchy())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branchy(self.lin(x))


class PositionTable(nn.Module):
    def forward(self) -> torch.Tensor:  # no tensor input to take a device from
        return torch.arange(4, device="cpu").float()


class UsesTable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = PositionTable()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table()


@torch.jit.script_if_tracing
def shifted(x: torch.Tensor) -> torch.Tensor:
    """A scripted helper called from a trace (prim::CallFunction): its branches stay data-dependent."""
    if bool(x.sum() > 0):
        return x + torch.ones(x.shape, device=torch.device("cpu"))
    return x - torch.ones(x.shape, device=x.device)


class CallsHelper(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shifted(x) * 2


class DeliberateCpu(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = x * 2 + torch.ones(4, device=x.device)
        on_host = hidden.cpu()  # the user wants this output on the host
        return hidden, on_host


class ScriptedCpu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.cpu() + torch.zeros(4, device=x.device)


class WithDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(torch.relu(self.bn(self.conv(x))))
        return y + torch.ones(1, 4, 1, 1, device=x.device) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)


def build(cls: type[nn.Module], *shape: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return cls().eval(), torch.randn(*shape)


# the graph pass -----------------------------------------------------------------------------------


def test_factory_ops_follow_the_input():
    model, x = build(Factories, 2, 4)
    pinned = pin(trace(model, x))
    assert "cuda" in fails_on_cpu(pinned, x).lower()
    assert any('torch.device("cuda:0")' in f for f in pinned_devices(pinned).pinned)

    fixed, rewrites = make_device_agnostic(pinned)

    assert_matches_eager(fixed, model, x)
    assert_matches_eager(fixed, model, torch.randn(5, 4))  # other batch sizes too
    ops = {r.op for r in rewrites if r.kind == "device_constant"}
    assert {
        "aten::zeros",
        "aten::ones",
        "aten::full",
        "aten::arange",
        "aten::eye",
        "aten::linspace",
        "aten::empty",
    } <= ops
    assert all(r.source.startswith(__file__) for r in rewrites if r.kind == "device_constant")
    assert pinned_devices(fixed).clean
    assert "unresolved" not in kinds(rewrites)


def test_move_to_a_weights_device_follows_the_input():
    model, x = build(ToWeightDevice, 2, 4)
    pinned = pin(trace(model, x))
    assert "cuda" in fails_on_cpu(pinned, x).lower()

    fixed, rewrites = make_device_agnostic(pinned)

    assert_matches_eager(fixed, model, x)
    [move] = [r for r in rewrites if r.op == "aten::to"]
    where = f"{__file__}:{line_of('x.to(self.weight')}"
    assert (move.kind, move.device, move.source) == ("device_constant", CUDA, where)
    assert "device=_0" in fixed.code and "ops.prim.device(x)" in fixed.code


def test_tensor_constants_are_moved_at_run_time_and_scalars_left_alone():
    model, x = build(TensorConstants, 2, 4)
    plain = trace(model, x)
    ok, reason = runs_on_meta(plain, (x,))
    assert not ok and reason.startswith("device mismatch"), reason

    fixed, rewrites = make_device_agnostic(pin(trace(model, x)))

    assert_matches_eager(fixed, model, x)
    assert runs_on_meta(fixed, (x,)) == (True, "ok: ran on meta, 1 output shape(s) match the CPU run")
    # A trace writes torch.tensor(...) as constant -> aten::to(constant, <device literal>): that
    # literal now follows the input, with or without device= in the source. The 0-dim 3.0 is left.
    sources = {r.source for r in rewrites if r.kind == "device_constant" and r.op == "aten::to"}
    lines = ("placed = torch.tensor", "unplaced = torch.tensor", "x * torch.tensor(3.0)")
    assert sources == {f"{__file__}:{line_of(text)}" for text in lines}
    assert "tensor_constant" not in kinds(rewrites)


def test_plain_tensor_attributes_become_buffers_before_capture():
    model, x = build(PlainAttribute, 2, 4)
    keys = set(model.state_dict())
    rewrites = eager_prepass(model)

    assert kinds(rewrites) == ["attribute_to_buffer", "tensor_container"]
    assert "scale" in dict(model.named_buffers()) and set(model.state_dict()) == keys  # non-persistent
    traced = trace(model, x)
    assert 'prim::GetAttr[name="scale"]' in str(traced.graph)
    # The tensor inside the list is still a CPU constant in the trace: the graph pass moves it.
    ok, reason = runs_on_meta(traced, (x,))
    assert not ok and reason.startswith("device mismatch"), reason
    fixed, graph_rewrites = make_device_agnostic(traced)
    assert kinds(graph_rewrites) == ["tensor_constant"]
    assert runs_on_meta(fixed, (x,))[0]

    # Without the prepass the graph pass makes both baked constants follow the input.
    other, _ = build(PlainAttribute, 2, 4)
    fixed, graph_rewrites = make_device_agnostic(trace(other, x))
    assert kinds(graph_rewrites) == ["tensor_constant", "tensor_constant"]
    assert all(r.source == f"{__file__}:{line_of('self.norm(self.lin(x) * self.scale')}" for r in graph_rewrites)
    assert runs_on_meta(fixed, (x,))[0]
    assert_matches_eager(fixed, other, x)


def test_constant_masks_become_device_safe_indices():
    model, x = build(ConstantMasks, 3, 4)
    pinned = pin(trace(model, x))
    assert "cuda" in fails_on_cpu(pinned, x).lower()
    ok, reason = runs_on_meta(trace(model, x), (x,))
    assert not ok  # a boolean mask has a data-dependent shape (and the unmoved CPU mask collides)

    fixed, rewrites = make_device_agnostic(pinned)

    assert_matches_eager(fixed, model, x)
    assert "mask_to_index" in kinds(rewrites)
    assert runs_on_meta(fixed, (x,))[0]
    assert "nonzero" not in str(torch.jit.freeze(fixed.eval()).graph)

    # A boolean attribute is left to the graph pass by the prepass, for the same static form.
    model, x = build(MaskAttribute, 3, 4)
    assert kinds(eager_prepass(model)) == ["mask_attribute"]
    fixed, rewrites = make_device_agnostic(trace(model, x))
    assert kinds(rewrites) == ["mask_to_index", "tensor_constant", "tensor_constant"]
    assert_matches_eager(fixed, model, x)
    assert runs_on_meta(fixed, (x,))[0]


def test_submodule_graphs_take_the_device_of_their_own_input():
    model = Nested().eval()
    x, y = torch.randn(2, 4), torch.randn(3, 4)
    pinned = pin(trace(model, x, y))
    assert "cuda" in fails_on_cpu(pinned, x, y).lower()

    fixed, rewrites = make_device_agnostic(pinned)

    assert_matches_eager(fixed, model, x, y)
    # Each method takes the device of its own first tensor input (the trace names it after the
    # caller's value: y), not forward's first input x.
    assert "ops.prim.device(y)" in fixed.middle.code and "ops.prim.device(x)" not in fixed.middle.code
    assert "ops.prim.device(" in fixed.middle.inner.code
    assert "prim::CallMethod" in str(fixed.graph)  # structure kept: nothing was inlined
    assert {r.op for r in rewrites} >= {"aten::ones", "aten::arange"}
    assert pinned_devices(fixed).clean


def test_scripted_branches_inside_a_trace():
    model = Hybrid().eval()
    positive, negative = torch.rand(2, 4) + 1, -torch.rand(2, 4) - 1
    pinned = pin(trace(model, positive))
    assert 'torch.device("cuda:0")' in pinned.branchy.code
    # Which literal a scripted branch uses depends on the data: both must be fixed.
    assert "cuda" in fails_on_cpu(pinned, torch.full((2, 4), 9.0)).lower()

    fixed, rewrites = make_device_agnostic(pinned)

    for x in (positive, negative):
        assert_matches_eager(fixed, model, x)
    assert "param_device" in kinds(rewrites)  # self.w.device: freeze would fold it into "cpu"
    sources = {r.source for r in rewrites if r.kind == "device_constant"}
    assert f"{__file__}:{line_of('bias = torch.ones(x.shape')}" in sources
    assert f"{__file__}:{line_of('bias = bias + torch.zeros')}" in sources  # inside the loop
    frozen = torch.jit.freeze(fixed.eval())
    assert pinned_devices(frozen).clean
    for x in (positive, negative):
        assert_matches_eager(frozen, model, x)


def test_methods_without_tensor_inputs_are_inlined_into_their_caller():
    model, x = build(UsesTable, 2, 4)
    pinned = pin(trace(model, x))
    fixed, rewrites = make_device_agnostic(pinned)

    assert "inlined_call" in kinds(rewrites)
    assert_matches_eager(fixed, model, x)
    assert runs_on_meta(fixed, (x,))[0]
    assert [f for f in pinned_devices(torch.jit.freeze(fixed.eval())).pinned] == []

    # A @torch.jit.script_if_tracing helper is a prim::CallFunction: inlined the same way.
    # (pin() reaches module methods only, so here the helper's literal stays "cpu": still a pin.)
    model, x = build(CallsHelper, 2, 3)
    traced = trace(model, x)
    assert 'torch.device("cpu")' in " ".join(pinned_devices(traced).pinned)
    fixed, rewrites = make_device_agnostic(traced)
    assert [r.op for r in rewrites if r.kind == "inlined_call"] == ["prim::CallFunction"]
    for sample in (x.abs() + 1, -x.abs() - 1):
        assert_matches_eager(fixed, model, sample)
    assert pinned_devices(fixed).clean


# freeze, lite, the proof check --------------------------------------------------------------------


def test_rewritten_module_survives_freeze_and_the_lite_interpreter(tmp_path):
    model, x = build(WithDropout, 1, 3, 8, 8)
    fixed, _ = make_device_agnostic(pin(trace(model, x)))

    path = save_lite(fixed, tmp_path / "model.ptl")
    lite = mobile._load_for_lite_interpreter(str(path))

    assert_matches_eager(lite, model, x)
    assert_matches_eager(lite, model, torch.randn(2, 3, 8, 8))
    assert pinned_devices(path).clean
    assert runs_on_meta(torch.jit.freeze(fixed.eval()), (x,))[0]


def test_the_check_flags_what_was_not_rewritten(tmp_path):
    model, x = build(Factories, 2, 4)
    cuda_path = save_lite(pin(trace(model, x)), tmp_path / "cuda.ptl")
    cpu_path = save_lite(trace(model, x), tmp_path / "cpu.ptl")

    cuda_findings = pinned_devices(cuda_path)
    assert cuda_findings.pinned and all('torch.device("cuda:0")' in f for f in cuda_findings.pinned)
    assert cuda_findings.pinned[0].startswith("code/__torch__")
    # A CPU trace is pinned too, to the CPU: it would copy a GPU phone's tensors to the host.
    assert pinned_devices(cpu_path).pinned
    ok, reason = runs_on_meta(torch.jit.freeze(pin(trace(model, x)).eval()), (x,))
    assert not ok and reason.startswith("device mismatch"), reason


def test_the_check_reads_where_tensor_constants_are_stored():
    model, x = build(PlainAttribute, 2, 4)
    traced = trace(model, x)
    [constant] = [
        n
        for n in walk(traced.graph)
        if n.kind() == "prim::Constant"
        and n.output().type().kind() == "TensorType"
        and n.output().toIValue().dim() == 1
    ][:1]
    constant.t_("value", torch.zeros(4, device="meta"))  # a device this machine has besides the CPU

    assert "constants.pkl: tensors stored on meta" in pinned_devices(traced).pinned
    _, rewrites = make_device_agnostic(traced)
    assert "unresolved" in kinds(rewrites)  # a meta tensor has no data to bring back to the CPU

    # Only storage locations count, not other strings of the pickle (a submodule called "meta").
    named = nn.Sequential()
    named.add_module("meta", nn.Linear(4, 4))
    assert pinned_devices(trace(named, x)).clean


def test_target_policy_pins_to_the_phone_cpu_and_reports_it(tmp_path):
    model, x = build(DeliberateCpu, 2, 4)
    traced = trace(model, x)
    pinned = pin(traced, keep_line=line_of("on_host = hidden.cpu()"))

    fixed, rewrites = make_device_agnostic(pinned, policy="target")

    assert_matches_eager(fixed, model, x)
    assert {"target_device", "kept_cpu"} <= set(kinds(rewrites))
    assert all(r.device == CUDA for r in rewrites if r.kind == "target_device")
    path = save_lite(fixed, tmp_path / "target.ptl")
    assert_matches_eager(mobile._load_for_lite_interpreter(str(path)), model, x)
    findings = pinned_devices(path, keep={"cpu"})
    assert findings.clean and findings.kept  # "cpu" literals remain, on purpose, and are reported
    assert not pinned_devices(path).clean  # ...and are distinguishable from an unchecked pin


def test_a_deliberate_cpu_call_is_kept_and_reported():
    model, x = build(DeliberateCpu, 2, 4)
    line = line_of("on_host = hidden.cpu()")
    fixed, rewrites = make_device_agnostic(pin(trace(model, x), keep_line=line))

    [kept] = [r for r in rewrites if r.kind == "kept_cpu"]
    assert (kept.op, kept.device, kept.source) == ("aten::to", "cpu", f"{__file__}:{line}")
    assert_matches_eager(fixed, model, x)
    assert not pinned_devices(fixed).clean
    assert pinned_devices(fixed, keep=kept_devices(rewrites)).clean

    # In TorchScript source, .cpu() is always deliberate.
    scripted = torch.jit.script(ScriptedCpu())
    _, script_rewrites = make_device_agnostic(scripted)
    assert [(r.kind, r.op) for r in script_rewrites if r.kind == "kept_cpu"] == [("kept_cpu", "aten::cpu")]

    # A trace recorded on the CPU cannot tell .cpu() from .to(x.device): it follows the input.
    _, cpu_rewrites = make_device_agnostic(trace(model, x))
    assert "kept_cpu" not in kinds(cpu_rewrites)


def test_runs_on_meta_tells_missing_kernels_from_device_pins():
    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nonzero(x > 0).float()

    x = torch.randn(3, 4)
    ok, reason = runs_on_meta(torch.jit.script(DataDependent()), (x,))
    assert not ok and reason.startswith("could not check"), reason

    model, x = build(Factories, 2, 4)
    ok, reason = runs_on_meta(trace(model, x), (x,))
    assert not ok and reason.startswith("device mismatch"), reason


def test_unknown_policy_is_refused():
    model, x = build(ToWeightDevice, 2, 4)
    with pytest.raises(ValueError, match="policy"):
        make_device_agnostic(trace(model, x), policy="gpu")


# converters ---------------------------------------------------------------------------------------


def test_rewritten_trace_exports_to_onnx():
    onnxruntime = pytest.importorskip("onnxruntime")
    model, x = build(ConstantMasks, 3, 4)
    fixed, _ = make_device_agnostic(pin(trace(model, x)))

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fixed, (x,), buffer, dynamo=False, opset_version=17, input_names=["x"])
    session = onnxruntime.InferenceSession(buffer.getvalue())
    for got, want in zip(session.run(None, {"x": x.numpy()}), model(x)):
        assert np.allclose(got, want.numpy(), atol=1e-6)
    assert b"NonZero" not in buffer.getvalue()  # the mask became a Gather


def test_rewritten_trace_converts_to_coreml():
    coremltools = pytest.importorskip("coremltools")
    model, x = build(ConstantMasks, 3, 4)
    fixed, _ = make_device_agnostic(pin(trace(model, x)))

    with quiet_converter(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "output renamed" notices: names are not what this tests
        converted = coremltools.convert(
            torch.jit.freeze(fixed.eval()),
            inputs=[coremltools.TensorType(name="x", shape=(3, 4))],
            convert_to="mlprogram",
            minimum_deployment_target=coremltools.target.iOS16,
        )
    # Prediction needs macOS; the program itself shows the mask became a static gather.
    ops = [op.op_type for op in converted._mil_program.functions["main"].operations]
    assert "gather" in ops and "non_zero" not in ops and "gather_nd" not in ops


# FX / torch.export --------------------------------------------------------------------------------


class FxFactories(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch.tensor(...) is evaluated while tracing: GraphModule keeps it as a buffer.
        return x.to("cpu") + torch.ones(x.size(), device="cpu") + torch.tensor([1.0, 2.0, 3.0, 4.0])


def test_fx_device_literals_follow_the_input():
    model, x = build(FxFactories, 2, 4)
    graph_module = torch.fx.symbolic_trace(model)
    with pytest.raises(Exception, match="meta"):
        copy.deepcopy(graph_module).to("meta")(x.to("meta"))

    rewrites = fx_device_kwargs(graph_module)

    assert [(r.kind, r.op, r.device) for r in rewrites] == [("fx_device", "to", "cpu"), ("fx_device", "ones", "cpu")]
    assert copy.deepcopy(graph_module).to("meta")(x.to("meta")).shape == (2, 4)
    assert_matches_eager(graph_module, model, x)

    exported = torch.export.export(model, (x,)).graph_module
    found = fx_device_kwargs(exported)
    assert found and set(kinds(found)) == {"fx_device_found"}
