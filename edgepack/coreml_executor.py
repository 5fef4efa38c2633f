"""Reference executor for saved Core ML ML programs: evaluates a .mlpackage with NumPy.

Core ML prediction only runs on macOS, so on Linux edgepack could not check the numbers of the
package it ships. This module reads the shipped files back (the program spec and its weight file),
rebuilds the program with coremltools' milproto loader (which decodes the weight blobs and gives
every value the type the program declares) and evaluates the main function op by op:

* ops coremltools can constant-fold run through their own ``value_inference`` (the reference
  semantics), except the few listed in ``_NOT_REFERENCE``;
* the rest (conv, pooling, norms, resizing, LSTM, scatter, the compressed-weight ``constexpr_*``
  ops, control flow, ...) run through the NumPy implementations registered below.

fp16: every value is rounded to the dtype the program declares for it, so a FLOAT16 program is
evaluated in fp16 the way the program says. Ops compute from their fp16 inputs in fp32 and round
their result once, which is how accumulation inside conv/matmul/reductions behaves on Apple
hardware (approximately). It is a reference, not a bit-exact model of any one compute unit.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["UnsupportedOp", "run_package", "supported_op_types", "unsupported_ops"]


class UnsupportedOp(Exception):
    """The program uses ops this executor cannot evaluate: report the model as not verified."""

    def __init__(self, op_types: list[str], detail: str = "") -> None:
        self.op_types = sorted(set(op_types))
        message = "the Core ML reference executor cannot evaluate op(s): " + ", ".join(self.op_types)
        super().__init__(f"{message} ({detail})" if detail else message)


def unsupported_ops(package: Path) -> list[str]:
    """Sorted op types in the saved program that the executor cannot evaluate ([] = all supported)."""
    return _unsupported(_load_spec(Path(package)))


def supported_op_types() -> list[str]:
    """Every op type the executor can evaluate (NumPy implementations plus reused value_inference)."""
    return sorted(_supported())


def run_package(package: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Evaluate the main function of a saved .mlpackage on `inputs`; outputs by description name.

    Inputs are cast to the program's declared input dtypes (int64 -> int32, fp32 -> fp16 for fp16
    inputs); outputs come back in the dtypes the model description declares, like Core ML's.
    Raises UnsupportedOp before evaluating anything if an op is unknown, ValueError for missing,
    unknown or misshaped inputs.
    """
    package = Path(package)
    spec = _load_spec(package)
    missing = _unsupported(spec)
    if missing:
        raise UnsupportedOp(missing)
    function = _load_main_function(spec, package)
    feeds = _prepare_inputs(function, inputs)
    _bind_constants(function)
    for name, value in feeds.items():
        _store(function.inputs[name], value)
    with np.errstate(all="ignore"):
        results = _run_block(function)
    return _collect_outputs(spec, function, results)


# --- loading ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """coremltools logs missing native libraries on import and type-inference chatter on load."""
    saved = logging.getLogger("coremltools").level
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.getLogger("coremltools").setLevel(saved)


def _ct() -> Any:
    with _quiet():
        import coremltools

    return coremltools


def _types() -> Any:
    with _quiet():
        from coremltools.converters.mil.mil import types

    return types


def _model_file(package: Path) -> Path:
    """The package's root model file, as its Manifest.json names it."""
    if not package.is_dir():
        raise ValueError(f"{package} is not an .mlpackage directory")
    _ct()
    from coremltools.libmodelpackage import ModelPackage

    return Path(ModelPackage(str(package)).getRootModel().path())


def _load_spec(package: Path) -> Any:
    spec = _ct().proto.Model_pb2.Model()
    spec.ParseFromString(_model_file(package).read_bytes())
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"{package.name} holds a {spec.WhichOneof('Type')} model, not an ML program")
    return spec


def _main_name(spec: Any) -> str:
    return spec.description.defaultFunctionName or "main"


def _load_main_function(spec: Any, package: Path) -> Any:
    """The program rebuilt as pymil objects; weights are read from the package's own weight files."""
    _ct()
    from coremltools.converters.mil.frontend.milproto.load import load

    weights_dir = _model_file(package).parent / "weights"
    with _quiet():
        program = load(spec, spec.specificationVersion, file_weights_dir=str(weights_dir))
    return program.functions[_main_name(spec)]


def _spec_op_types(spec: Any) -> set[str]:
    function = spec.mlProgram.functions[_main_name(spec)]
    found: set[str] = set()

    def walk(block: Any) -> None:
        for op in block.operations:
            found.add(op.type)
            for inner in op.blocks:
                walk(inner)

    walk(function.block_specializations[function.opset])
    return found


def _unsupported(spec: Any) -> list[str]:
    return sorted(_spec_op_types(spec) - _supported())


# --- values ----------------------------------------------------------------------------------


def _np_dtype(var: Any) -> np.dtype:
    return np.dtype(_types().nptype_from_builtin(var.dtype))


def _bind(var: Any, value: Any) -> None:
    """Give `var` a runtime value that both our ops and coremltools' value_inference read as var.val.

    The setter is bypassed on purpose: fp16 values are kept as fp32 arrays of fp16-representable
    numbers, so every op computes in fp32 from exactly rounded fp16 inputs.
    """
    holder = var.sym_type()
    holder._val = value
    var._sym_val = holder


def _store(var: Any, value: Any) -> None:
    """Round `value` to the var's declared dtype and bind it, checking the declared shape."""
    dtype = _np_dtype(var)
    array = np.asarray(value)
    if dtype == np.float16:
        array = array.astype(np.float16).astype(np.float32)
    elif array.dtype != dtype:
        array = array.astype(dtype)
    types = _types()
    if types.is_tensor(var.sym_type):
        _check_shape(var, array)
        _bind(var, array)
    else:
        if array.size != 1:
            raise RuntimeError(f"'{var.name}' is a scalar in the program but evaluated to shape {array.shape}")
        _bind(var, array.reshape(())[()])


def _check_shape(var: Any, array: np.ndarray) -> None:
    declared = var.shape
    same = len(declared) == array.ndim and all(
        not isinstance(d, (int, np.integer)) or d == n for d, n in zip(declared, array.shape)
    )
    if not same:
        op = var.op.op_type if var.op is not None else "input"
        raise RuntimeError(f"'{var.name}' ({op}) evaluated to shape {array.shape}, the program declares {tuple(declared)}")


def _bind_constants(function: Any) -> None:
    """fp16 weights become fp32 copies up front, so ops accumulate in fp32 (see _bind)."""

    def walk(block: Any) -> None:
        for op in block.operations:
            if op.op_type == "const" and _types().is_float(op.outputs[0].dtype):
                _store(op.outputs[0], op.outputs[0].val)
            for inner in op.blocks:
                walk(inner)

    walk(function)


def _prepare_inputs(function: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    declared = function.inputs
    missing = sorted(set(declared) - set(inputs))
    unknown = sorted(set(inputs) - set(declared))
    if missing or unknown:
        raise ValueError(f"the program takes inputs {sorted(declared)}; missing {missing}, unknown {unknown}")
    return {name: _cast_input(name, var, np.asarray(inputs[name])) for name, var in declared.items()}


def _cast_input(name: str, var: Any, array: np.ndarray) -> np.ndarray:
    shape = tuple(var.shape)
    if len(shape) != array.ndim or any(isinstance(d, int) and d != n for d, n in zip(shape, array.shape)):
        raise ValueError(f"input '{name}' has shape {array.shape}, the program expects {shape}")
    target = _np_dtype(var)
    if target.kind in "iu":
        if array.dtype.kind not in "iub":
            raise ValueError(f"input '{name}' is {array.dtype}, the program expects integers ({target})")
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(f"input '{name}' has values outside the {target} range the program takes")
    return array.astype(target)


def _collect_outputs(spec: Any, function: Any, results: list[Any]) -> dict[str, np.ndarray]:
    """Outputs by the description's names, in the description's dtypes (what Core ML hands back)."""
    by_name = {var.name: value for var, value in zip(function.outputs, results)}
    described = list(spec.description.output)
    outputs = {}
    for index, feature in enumerate(described):
        value = by_name.get(feature.name, results[index] if index < len(results) else None)
        if value is None:
            raise RuntimeError(f"the program has no value for output '{feature.name}'")
        outputs[feature.name] = np.asarray(value).astype(_description_dtype(feature, np.asarray(value).dtype))
    return outputs


def _description_dtype(feature: Any, fallback: np.dtype) -> np.dtype:
    if feature.type.WhichOneof("Type") != "multiArrayType":
        return fallback
    array_type = _ct().proto.FeatureTypes_pb2.ArrayFeatureType
    names = {array_type.FLOAT32: np.float32, array_type.FLOAT16: np.float16,
             array_type.DOUBLE: np.float64, array_type.INT32: np.int32}
    return np.dtype(names.get(feature.type.multiArrayType.dataType, fallback))


# --- evaluation ------------------------------------------------------------------------------

OpImpl = Callable[[Any], Any]
"""Takes the pymil Operation (its input vars hold runtime values in .val); returns a value or a tuple."""

_IMPLS: dict[str, OpImpl] = {}

# Ops whose value_inference is not usable at run time: symbolic-only or list helpers, in-place
# mutation of the input (thresholded_relu), ignored `mode` (scatter_along_axis), broken exclusive
# mode (cumsum), fp16/bool scalar squeeze failure (slice_by_index), an unimplemented stub
# (reverse_sequence), or control flow, which needs its blocks run (cond).
_NOT_REFERENCE = {"_const_symbolic", "list_length", "cond", "thresholded_relu", "scatter_along_axis",
                  "cumsum", "slice_by_index", "reverse_sequence"}


def _register(*op_types: str) -> Callable[[OpImpl], OpImpl]:
    def decorate(fn: OpImpl) -> OpImpl:
        for op_type in op_types:
            _IMPLS[op_type] = fn
        return fn

    return decorate


def _reference_ops() -> set[str]:
    """Core ops that implement value_inference in every opset version coremltools registers."""
    with _quiet():
        from coremltools.converters.mil.mil.operation import Operation
        from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    found = set()
    for name, versions in SSAOpRegistry.core_ops.items():
        classes = [cls for cls in versions.values() if cls is not None]
        if classes and all(cls.value_inference is not Operation.value_inference for cls in classes):
            found.add(name)
    return found - _NOT_REFERENCE


_SUPPORTED: set[str] = set()


def _supported() -> set[str]:
    if not _SUPPORTED:
        _SUPPORTED.update(_reference_ops() | set(_IMPLS) | {"const"})
    return _SUPPORTED


def _run_block(block: Any) -> list[Any]:
    for op in block.operations:
        if op.op_type != "const":  # constants were bound when the program was loaded
            _evaluate(op)
    return [var.val for var in block.outputs]


def _evaluate(op: Any) -> None:
    impl = _IMPLS.get(op.op_type)
    if impl is not None:
        result = impl(op)
    else:
        try:
            result = op.value_inference()
        except NotImplementedError:
            result = None
        if result is None:
            raise UnsupportedOp([op.op_type], f"coremltools cannot evaluate '{op.name}' with these inputs")
    results = result if isinstance(result, (tuple, list)) else (result,)
    if len(results) != len(op.outputs):
        raise RuntimeError(f"'{op.name}' ({op.op_type}) gave {len(results)} values for {len(op.outputs)} outputs")
    for var, value in zip(op.outputs, results):
        _store(var, value)


def _val(op: Any, name: str, default: Any = None) -> Any:
    """An input's runtime value, or `default` when the optional input is absent."""
    var = getattr(op, name, None)
    return default if var is None or var.val is None else var.val


def _f32(op: Any, name: str) -> np.ndarray:
    return np.asarray(op.inputs[name].val, dtype=np.float32)


# --- control flow ----------------------------------------------------------------------------

_MAX_LOOP_ITERATIONS = 1_000_000


@_register("cond")
def _cond(op: Any) -> tuple:
    branch = op.blocks[0] if bool(np.asarray(op.pred.val)) else op.blocks[1]
    return tuple(_run_block(branch))


@_register("while_loop")
def _while_loop(op: Any) -> tuple:
    condition, body = op.blocks
    values = [var.val for var in op.loop_vars]
    for _ in range(_MAX_LOOP_ITERATIONS):
        for var, value in zip(condition.inputs, values):
            _store(var, value)
        if not bool(np.asarray(_run_block(condition)[0])):
            return tuple(values)
        for var, value in zip(body.inputs, values):
            _store(var, value)
        values = _run_block(body)
    raise RuntimeError(f"while_loop '{op.name}' did not finish in {_MAX_LOOP_ITERATIONS} iterations")


# --- convolution -----------------------------------------------------------------------------


def _same_pads(total: int, lower: bool) -> tuple[int, int]:
    # 'same' puts the odd extra row/column at the end (bottom/right), 'same_lower' at the start.
    small, large = total // 2, total - total // 2
    return (large, small) if lower else (small, large)


def _pads(pad_type: str, pad: Any, in_sizes: tuple, kernel: list, strides: list, dilations: list) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dim, as coremltools' type inference computes it."""
    if pad_type == "valid":
        return [(0, 0)] * len(kernel)
    if pad_type == "custom":
        pad = [int(p) for p in np.asarray(pad).ravel()]
        return [(pad[2 * i], pad[2 * i + 1]) for i in range(len(kernel))]
    if pad_type in ("same", "same_lower"):
        result = []
        for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
            extent = (k - 1) * d + 1
            total = max(0, s * math.ceil(size / s) - size + extent - s)
            result.append(_same_pads(total, pad_type == "same_lower"))
        return result
    raise NotImplementedError(f"pad_type '{pad_type}'")


def _windows(x: np.ndarray, kernel: list, strides: list, dilations: list, out_sizes: tuple) -> np.ndarray:
    """View of shape (N, C, *out, *kernel): every (strided, dilated) window of the padded input."""
    nd = len(kernel)
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    view = sliding_window_view(x, extent, axis=tuple(range(2, 2 + nd)))
    starts = tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out_sizes, strides))
    taps = tuple(slice(None, None, d) for d in dilations)
    return view[(slice(None), slice(None)) + starts + taps]


def _ints(value: Any, count: int, default: int = 1) -> list[int]:
    return [default] * count if value is None else [int(v) for v in np.asarray(value).ravel()]


@_register("conv")
def _conv(op: Any) -> np.ndarray:
    x, weight = _f32(op, "x"), _f32(op, "weight")
    nd = weight.ndim - 2
    kernel, groups = list(weight.shape[2:]), int(_val(op, "groups", 1))
    strides, dilations = _ints(_val(op, "strides"), nd), _ints(_val(op, "dilations"), nd)
    pads = _pads(str(_val(op, "pad_type", "valid")), _val(op, "pad"), x.shape[2:], kernel, strides, dilations)
    padded = np.pad(x, [(0, 0), (0, 0)] + pads)
    out_sizes = tuple(op.outputs[0].shape[2:])
    windows = _windows(padded, kernel, strides, dilations, out_sizes)
    result = _grouped_matmul(windows, weight, groups)
    bias = _val(op, "bias")
    if bias is not None:
        result = result + np.asarray(bias, np.float32).reshape((1, -1) + (1,) * nd)
    return result


def _grouped_matmul(windows: np.ndarray, weight: np.ndarray, groups: int) -> np.ndarray:
    """im2col convolution: one fp32 BLAS matmul per group, which is where the accumulation happens."""
    n, c = windows.shape[:2]
    nd = weight.ndim - 2
    out_sizes = windows.shape[2:2 + nd]
    c_out, c_group, taps = weight.shape[0], c // groups, int(np.prod(weight.shape[2:]))
    cols = windows.reshape((n, groups, c_group) + out_sizes + weight.shape[2:])
    order = (1, 0) + tuple(range(3, 3 + nd)) + (2,) + tuple(range(3 + nd, 3 + 2 * nd))
    cols = cols.transpose(order).reshape(groups, n * int(np.prod(out_sizes)), c_group * taps)
    kernels = weight.reshape(groups, c_out // groups, c_group * taps).transpose(0, 2, 1)
    result = np.matmul(cols, kernels)  # (groups, n * positions, c_out / groups)
    result = result.reshape((groups, n) + out_sizes + (c_out // groups,))
    order = (1, 0, 2 + nd) + tuple(range(2, 2 + nd))
    return result.transpose(order).reshape((n, c_out) + out_sizes)


@_register("conv_transpose")
def _conv_transpose(op: Any) -> np.ndarray:
    x, weight = _f32(op, "x"), _f32(op, "weight")  # weight: (C_in, C_out / groups, *K)
    nd, groups = weight.ndim - 2, int(_val(op, "groups", 1))
    kernel = list(weight.shape[2:])
    strides, dilations = _ints(_val(op, "strides"), nd), _ints(_val(op, "dilations"), nd)
    n, c_in, in_sizes = x.shape[0], x.shape[1], x.shape[2:]
    c_group, c_out_group = c_in // groups, weight.shape[1]
    full_sizes = [(i - 1) * s + (k - 1) * d + 1 for i, s, k, d in zip(in_sizes, strides, kernel, dilations)]
    full = np.zeros((n, c_out_group * groups) + tuple(full_sizes), np.float32)
    # Scatter form: every kernel tap adds x (projected by that tap's weights) at a strided offset.
    for g in range(groups):
        xg = x[:, g * c_group:(g + 1) * c_group]
        for tap in np.ndindex(*kernel):
            w_tap = weight[(slice(g * c_group, (g + 1) * c_group), slice(None)) + tap]
            contribution = np.moveaxis(np.tensordot(xg, w_tap, axes=([1], [0])), -1, 1)
            where = tuple(slice(t * d, t * d + (i - 1) * s + 1, s) for t, d, i, s in zip(tap, dilations, in_sizes, strides))
            full[(slice(None), slice(g * c_out_group, (g + 1) * c_out_group)) + where] += contribution
    out_sizes = tuple(op.outputs[0].shape[2:])
    result = _crop_transposed(full, op, full_sizes, out_sizes, strides, in_sizes)
    bias = _val(op, "bias")
    if bias is not None:
        result = result + np.asarray(bias, np.float32).reshape((1, -1) + (1,) * nd)
    return result


def _crop_transposed(full: np.ndarray, op: Any, full_sizes: list, out_sizes: tuple, strides: list, in_sizes: tuple) -> np.ndarray:
    pad_type = str(_val(op, "pad_type", "valid"))
    nd = len(full_sizes)
    if pad_type == "custom":
        starts = [int(p) for p in np.asarray(_val(op, "pad")).ravel()[0::2]]
    elif pad_type in ("same", "same_lower"):
        starts = [_same_pads(f - i * s, pad_type == "same_lower")[0] for f, i, s in zip(full_sizes, in_sizes, strides)]
    else:
        starts = [0] * nd
    # output_shape (when given) can ask for more than the taps reach: the remainder stays zero.
    result = np.zeros(full.shape[:2] + out_sizes, np.float32)
    src = tuple(slice(b, min(b + o, f)) for b, o, f in zip(starts, out_sizes, full_sizes))
    dst = tuple(slice(0, s.stop - s.start) for s in src)
    result[(slice(None), slice(None)) + dst] = full[(slice(None), slice(None)) + src]
    return result


# --- pooling ---------------------------------------------------------------------------------


def _pool_windows(op: Any, fill: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows over the input padded with `fill`, plus window sums of 'real element' and
    'inside declared padding' masks (the average divisors)."""
    x = _f32(op, "x")
    kernel = _ints(_val(op, "kernel_sizes"), 0)
    nd = len(kernel)
    strides = _ints(_val(op, "strides"), nd)
    in_sizes, out_sizes = x.shape[-nd:], tuple(op.outputs[0].shape[-nd:])
    pads = _pads(str(_val(op, "pad_type", "valid")), _val(op, "pad"), in_sizes, kernel, strides, [1] * nd)
    # ceil_mode windows may run past the declared padding: extend with `fill`, never counted.
    extra = [max(0, (o - 1) * s + k - (i + b + a)) for o, s, k, i, (b, a) in zip(out_sizes, strides, kernel, in_sizes, pads)]
    lead = x.shape[:-nd]
    x4 = x.reshape((int(np.prod(lead)), 1) + in_sizes)
    widths = [(0, 0), (0, 0)] + [(b, a + e) for (b, a), e in zip(pads, extra)]
    padded = np.pad(x4, widths, constant_values=fill)
    real = np.pad(np.ones((1, 1) + in_sizes, np.float32), widths)
    declared = np.pad(np.ones((1, 1) + tuple(i + b + a for i, (b, a) in zip(in_sizes, pads)), np.float32),
                      [(0, 0), (0, 0)] + [(0, e) for e in extra])
    axes = tuple(range(-nd, 0))
    win = _windows(padded, kernel, strides, [1] * nd, out_sizes)
    real_count = _windows(real, kernel, strides, [1] * nd, out_sizes).sum(axis=axes)
    declared_count = _windows(declared, kernel, strides, [1] * nd, out_sizes).sum(axis=axes)
    return win.reshape(lead + win.shape[2:]), real_count.reshape(out_sizes), declared_count.reshape(out_sizes)


@_register("max_pool")
def _max_pool(op: Any) -> np.ndarray:
    win, _, _ = _pool_windows(op, -np.inf)
    nd = win.ndim - len(op.outputs[0].shape)
    return win.max(axis=tuple(range(-nd, 0)))


@_register("avg_pool")
def _avg_pool(op: Any) -> np.ndarray:
    win, real, declared = _pool_windows(op, 0.0)
    nd = win.ndim - len(op.outputs[0].shape)
    divisor = real if bool(_val(op, "exclude_padding_from_average", False)) else declared
    return win.sum(axis=tuple(range(-nd, 0))) / divisor


@_register("l2_pool")
def _l2_pool(op: Any) -> np.ndarray:
    win, _, _ = _pool_windows(op, 0.0)
    nd = win.ndim - len(op.outputs[0].shape)
    return np.sqrt(np.square(win).sum(axis=tuple(range(-nd, 0))))
