"""Reference executor for saved Core ML ML programs: evaluates a .mlpackage with NumPy.

Core ML prediction only runs on macOS, so on Linux edgepack could not check the numbers of the
package it ships. This module reads the shipped files back (the program spec and its weight file),
rebuilds the program with coremltools' milproto loader (which decodes the weight blobs and gives
every value the type the program declares) and evaluates the main function op by op:

* ops coremltools can constant-fold run through their own ``value_inference`` (the reference
  semantics), except the few listed in ``_NOT_REFERENCE``;
* the rest (conv, pooling, norms, resizing, resample, LSTM, scatter, the compressed-weight ``constexpr_*``
  ops, control flow, ...) run through the NumPy implementations registered below.

fp16: every value is rounded to the dtype the program declares for it, so a FLOAT16 program is
evaluated in fp16 the way the program says. Ops compute from their fp16 inputs in fp32 and round
their result once, which is how accumulation inside conv/matmul/reductions behaves on Apple
hardware (approximately). It is a reference, not a bit-exact model of any one compute unit.

Flexible input shapes: the program then declares symbolic sizes; ops whose output size follows the
input's (conv, pooling, resizing, reshape, shape, expand_dims, flatten2d, fill_like, l2_norm,
slice_by_size) size their results from the run's arrays. Any other op whose value_inference fails on
a flexible input raises UnsupportedOp naming it (a Symbol leaked from the declared shape).
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ...noise import quiet_converter

__all__ = [
    "UnsupportedOp",
    "coremltools_module",
    "program_op_types",
    "run_package",
    "supported_op_types",
    "unsupported_ops",
]


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
    return LoadedPackage(package).run(inputs)


class LoadedPackage:
    """A saved .mlpackage's main function, rebuilt once and run many times (rebuilding the program from
    its proto and weight files costs far more than evaluating a small model). Every run binds its inputs
    and evaluates every non-const op again, so no value of one run survives into the next."""

    def __init__(self, package: Path) -> None:
        package = Path(package)
        self.spec = _load_spec(package)
        missing = _unsupported(self.spec)
        if missing:
            raise UnsupportedOp(missing)
        self.function = _load_main_function(self.spec, package)
        _bind_constants(self.function)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = _prepare_inputs(self.function, inputs)
        for name, value in feeds.items():
            _store(self.function.inputs[name], value)
        with np.errstate(all="ignore"):
            results = _run_block(self.function)
        return _collect_outputs(self.spec, self.function, results)


# --- loading ---------------------------------------------------------------------------------


@functools.cache
def coremltools_module() -> Any:
    """coremltools, imported once and quietly: on Linux its import logs missing native libraries.

    scikit-learn (installed with ExecuTorch) is hidden from that import unless something imported it already:
    coremltools imports it only to offer its scikit-learn converters, which edgepack never uses and which
    it disables anyway beyond scikit-learn 1.5.1; the import costs 0.8 s of every Core ML build."""
    hide_sklearn = "sklearn" not in sys.modules
    if hide_sklearn:
        sys.modules["sklearn"] = None  # type: ignore[assignment]  # `import sklearn` raises ImportError
    try:
        with quiet_converter():
            import coremltools
    finally:
        if hide_sklearn and sys.modules.get("sklearn", "") is None:
            del sys.modules["sklearn"]  # a later `import sklearn` (a user's model) works as ever
    return coremltools


_ct = coremltools_module


@functools.cache
def _types() -> Any:
    with quiet_converter():
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
    with quiet_converter():
        program = load(spec, spec.specificationVersion, file_weights_dir=str(weights_dir))
    return program.functions[_main_name(spec)]


def program_op_types(spec: Any) -> set[str]:
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
    return sorted(program_op_types(spec) - _supported())


# --- values ----------------------------------------------------------------------------------


def _np_dtype(var: Any) -> np.dtype:
    return np.dtype(_types().nptype_from_builtin(var.dtype))


def _bind(var: Any, value: Any) -> None:
    """Give `var` a runtime value that both our ops and coremltools' value_inference read as var.val.

    The setter is bypassed on purpose: fp16 values are kept as fp32 arrays of fp16-representable
    numbers, so every op computes in fp32 from exactly rounded fp16 inputs.
    """
    holder = var.sym_type()
    if isinstance(getattr(type(holder), "val", None), property):
        holder._val = value
    else:  # types.bool keeps a plain attribute
        holder.val = value
    var._sym_val = holder


def _store(var: Any, value: Any) -> None:
    """Round `value` to the var's declared dtype and bind it, checking the declared shape."""
    dtype = _np_dtype(var)
    array = np.asarray(value)
    if dtype == np.float16:
        array = array.astype(np.float16).astype(np.float32)
    elif array.dtype != dtype:
        array = array.astype(dtype)
    array.setflags(write=False)  # a value_inference that writes into its input fails loudly
    if _types().is_tensor(var.sym_type):
        if not _shape_matches(var.shape, array.shape):
            op = var.op.op_type if var.op is not None else "block input"
            raise RuntimeError(
                f"'{var.name}' ({op}) evaluated to shape {array.shape}, the program declares {tuple(var.shape)}"
            )
        _bind(var, array)
    else:
        if array.size != 1:
            raise RuntimeError(f"'{var.name}' is a scalar in the program but evaluated to shape {array.shape}")
        scalar = array.reshape(())[()]
        # numpy 2 bools are not indices: value_inference code passes them as keepdims= etc.
        _bind(var, bool(scalar) if array.dtype == np.bool_ else scalar)


def _shape_matches(declared: tuple, actual: tuple) -> bool:
    """Symbolic (flexible) dimensions match any size."""
    return len(declared) == len(actual) and all(
        not isinstance(d, (int, np.integer)) or d == n for d, n in zip(declared, actual)
    )


def _bind_constants(function: Any) -> None:
    """fp16 weights become fp32 copies up front, so ops accumulate in fp32 (see _bind)."""

    def walk(block: Any) -> None:
        for op in block.operations:
            out = op.outputs[0] if op.op_type == "const" else None
            if out is not None and (_types().is_float(out.dtype) or out.dtype == _types().bool):
                _store(out, out.val)
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
    if not _shape_matches(var.shape, array.shape):
        raise ValueError(f"input '{name}' has shape {array.shape}, the program expects {tuple(var.shape)}")
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
    names = {
        array_type.FLOAT32: np.float32,
        array_type.FLOAT16: np.float16,
        array_type.DOUBLE: np.float64,
        array_type.INT32: np.int32,
    }
    return np.dtype(names.get(feature.type.multiArrayType.dataType, fallback))


# --- evaluation ------------------------------------------------------------------------------

OpImpl = Callable[[Any], Any]
"""Takes the pymil Operation (its input vars hold runtime values in .val); returns a value or a tuple."""

_IMPLS: dict[str, OpImpl] = {}

# Ops whose value_inference is not usable at run time: symbolic-only or list helpers, in-place
# mutation of the input (thresholded_relu), ignored `mode` (scatter_along_axis), broken exclusive
# mode (cumsum), fp16/bool scalar squeeze failure (slice_by_index), an unimplemented stub
# (reverse_sequence), or control flow, which needs its blocks run (cond).
_NOT_REFERENCE = {
    "_const_symbolic",
    "list_length",
    "cond",
    "thresholded_relu",
    "scatter_along_axis",
    "cumsum",
    "slice_by_index",
    "reverse_sequence",
}


def _register(*op_types: str) -> Callable[[OpImpl], OpImpl]:
    def decorate(fn: OpImpl) -> OpImpl:
        for op_type in op_types:
            _IMPLS[op_type] = fn
        return fn

    return decorate


def _reference_ops() -> set[str]:
    """Core ops that implement value_inference in every opset version coremltools registers."""
    with quiet_converter():
        from coremltools.converters.mil.mil.operation import Operation
        from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    found = set()
    for name, versions in SSAOpRegistry.core_ops.items():
        classes = [cls for cls in versions.values() if cls is not None]
        if classes and all(cls.value_inference is not Operation.value_inference for cls in classes):
            found.add(name)
    return found - _NOT_REFERENCE


@functools.cache
def _supported() -> frozenset[str]:
    return frozenset(_reference_ops() | set(_IMPLS) | {"const"})


def _run_block(block: Any) -> list[Any]:
    for op in block.operations:
        if op.op_type != "const":  # constants were bound when the program was loaded
            _evaluate(op)
    return [var.val for var in block.outputs]


def _evaluate(op: Any) -> None:
    impl = _IMPLS.get(op.op_type)
    try:
        result = impl(op) if impl is not None else op.value_inference()
    except NotImplementedError as exc:
        # Known op, unsupported variant (e.g. an undocumented mode): still "not verified".
        raise UnsupportedOp([op.op_type], f"'{op.name}': {exc}") from exc
    except Exception as exc:
        if impl is None and _has_flexible_input(op):
            # coremltools' value_inference read a declared flexible size (a Symbol) instead of the run's:
            # that says nothing about the program, only that this executor cannot evaluate the op here.
            raise UnsupportedOp(
                [op.op_type],
                f"'{op.name}': coremltools' value_inference needs the input's declared "
                f"shape, which is flexible ({type(exc).__name__}: {exc})",
            ) from exc
        raise
    if result is None:
        raise UnsupportedOp([op.op_type], f"coremltools cannot evaluate '{op.name}' with these inputs")
    if len(op.outputs) == 1:
        results = (result[0] if isinstance(result, tuple) and len(result) == 1 else result,)
    else:
        results = tuple(result)
    if len(results) != len(op.outputs):
        raise RuntimeError(f"'{op.name}' ({op.op_type}) gave {len(results)} values for {len(op.outputs)} outputs")
    for var, value in zip(op.outputs, results):
        _store(var, value)


def _has_flexible_input(op: Any) -> bool:
    return any(
        _types().is_tensor(var.sym_type) and not all(isinstance(d, (int, np.integer)) for d in var.shape)
        for var in _input_vars(op)
    )


def _input_vars(op: Any) -> list[Any]:
    found = []
    for value in op.inputs.values():
        found += list(value) if isinstance(value, (list, tuple)) else [value]
    return found


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


def _pads(
    pad_type: str, pad: Any, in_sizes: tuple, kernel: list, strides: list, dilations: list
) -> list[tuple[int, int]]:
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
    # numpy accepts a tuple of axes; its stub says one axis.
    view = sliding_window_view(x, extent, axis=tuple(range(2, 2 + nd)))  # type: ignore[call-overload]
    starts = tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out_sizes, strides))
    taps = tuple(slice(None, None, d) for d in dilations)
    return view[(slice(None), slice(None)) + starts + taps]


def _ints(value: Any, count: int, default: int = 1) -> list[int]:
    return [default] * count if value is None else [int(v) for v in np.asarray(value).ravel()]


def _sizes(op: Any, computed: list[int]) -> tuple[int, ...]:
    """The output's trailing sizes as the program declares them; a flexible (symbolic) one, in a
    program with flexible input shapes, is the size computed from this run's input instead."""
    declared = op.outputs[0].shape[len(op.outputs[0].shape) - len(computed) :]
    return tuple(int(d) if isinstance(d, (int, np.integer)) else int(c) for d, c in zip(declared, computed))


@_register("conv")
def _conv(op: Any) -> np.ndarray:
    x, weight = _f32(op, "x"), _f32(op, "weight")
    nd = weight.ndim - 2
    kernel, groups = list(weight.shape[2:]), int(_val(op, "groups", 1))
    strides, dilations = _ints(_val(op, "strides"), nd), _ints(_val(op, "dilations"), nd)
    pads = _pads(str(_val(op, "pad_type", "valid")), _val(op, "pad"), x.shape[2:], kernel, strides, dilations)
    padded = np.pad(x, [(0, 0), (0, 0)] + pads)
    out_sizes = _sizes(
        op, [(p - (k - 1) * d - 1) // s + 1 for p, k, d, s in zip(padded.shape[2:], kernel, dilations, strides)]
    )
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
    out_sizes = windows.shape[2 : 2 + nd]
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
        xg = x[:, g * c_group : (g + 1) * c_group]
        for tap in np.ndindex(*kernel):
            w_tap = weight[(slice(g * c_group, (g + 1) * c_group), slice(None)) + tap]
            contribution = np.moveaxis(np.tensordot(xg, w_tap, axes=([1], [0])), -1, 1)
            where = tuple(
                slice(t * d, t * d + (i - 1) * s + 1, s) for t, d, i, s in zip(tap, dilations, in_sizes, strides)
            )
            full[(slice(None), slice(g * c_out_group, (g + 1) * c_out_group)) + where] += contribution
    out_sizes = _sizes(op, _transposed_sizes(op, full_sizes, strides, in_sizes))
    result = _crop_transposed(full, op, full_sizes, out_sizes, strides, in_sizes)
    bias = _val(op, "bias")
    if bias is not None:
        result = result + np.asarray(bias, np.float32).reshape((1, -1) + (1,) * nd)
    return result


def _transposed_sizes(op: Any, full_sizes: list, strides: list, in_sizes: tuple) -> list[int]:
    requested = _val(op, "output_shape")
    if requested is not None:
        return [int(v) for v in np.asarray(requested).ravel()[-len(full_sizes) :]]
    pad_type = str(_val(op, "pad_type", "valid"))
    if pad_type == "custom":
        pad = [int(p) for p in np.asarray(_val(op, "pad")).ravel()]
        return [f - pad[2 * i] - pad[2 * i + 1] for i, f in enumerate(full_sizes)]
    if pad_type in ("same", "same_lower"):
        return [i * s for i, s in zip(in_sizes, strides)]
    return list(full_sizes)


def _crop_transposed(
    full: np.ndarray, op: Any, full_sizes: list, out_sizes: tuple, strides: list, in_sizes: tuple
) -> np.ndarray:
    pad_type = str(_val(op, "pad_type", "valid"))
    nd = len(full_sizes)
    if pad_type == "custom":
        starts = [int(p) for p in np.asarray(_val(op, "pad")).ravel()[0::2]]
    elif pad_type in ("same", "same_lower"):
        starts = [
            _same_pads(max(0, f - i * s), pad_type == "same_lower")[0] for f, i, s in zip(full_sizes, in_sizes, strides)
        ]
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
    in_sizes = x.shape[-nd:]
    pads = _pads(str(_val(op, "pad_type", "valid")), _val(op, "pad"), in_sizes, kernel, strides, [1] * nd)
    rounding = math.ceil if bool(_val(op, "ceil_mode", False)) else math.floor
    out_sizes = _sizes(
        op, [rounding((i + b + a - k) / s) + 1 for i, (b, a), k, s in zip(in_sizes, pads, kernel, strides)]
    )
    # ceil_mode windows may run past the declared padding: extend with `fill`, never counted.
    extra = [
        max(0, (o - 1) * s + k - (i + b + a)) for o, s, k, i, (b, a) in zip(out_sizes, strides, kernel, in_sizes, pads)
    ]
    lead = x.shape[:-nd]
    x4 = x.reshape((int(np.prod(lead)), 1) + in_sizes)
    widths = [(0, 0), (0, 0)] + [(b, a + e) for (b, a), e in zip(pads, extra)]
    padded = np.pad(x4, widths, constant_values=fill)
    real = np.pad(np.ones((1, 1) + in_sizes, np.float32), widths)
    declared = np.pad(
        np.ones((1, 1) + tuple(i + b + a for i, (b, a) in zip(in_sizes, pads)), np.float32),
        [(0, 0), (0, 0)] + [(0, e) for e in extra],
    )
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


# --- normalization and activations -----------------------------------------------------------


def _per_channel(value: Any, ndim: int) -> np.ndarray:
    """A (C,) parameter shaped to broadcast over (N, C, *spatial)."""
    return np.asarray(value, np.float32).reshape((1, -1) + (1,) * (ndim - 2))


@_register("batch_norm")
def _batch_norm(op: Any) -> np.ndarray:
    x = _f32(op, "x")
    scale = 1.0 / np.sqrt(_per_channel(_val(op, "variance"), x.ndim) + np.float32(_val(op, "epsilon", 1e-5)))
    y = (x - _per_channel(_val(op, "mean"), x.ndim)) * scale
    return y * _per_channel(_val(op, "gamma", 1.0), x.ndim) + _per_channel(_val(op, "beta", 0.0), x.ndim)


@_register("instance_norm")
def _instance_norm(op: Any) -> np.ndarray:
    x = _f32(op, "x")
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = np.square(x - mean).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.float32(_val(op, "epsilon", 1e-5)))
    return y * _per_channel(_val(op, "gamma", 1.0), x.ndim) + _per_channel(_val(op, "beta", 0.0), x.ndim)


@_register("local_response_norm")
def _local_response_norm(op: Any) -> np.ndarray:
    x, size = _f32(op, "x"), int(_val(op, "size"))
    if size % 2 == 0:
        raise NotImplementedError("local_response_norm with an even window: where the window sits is undocumented")
    squares = np.pad(np.square(x), [(0, 0), (size // 2, size // 2)] + [(0, 0)] * (x.ndim - 2))
    window_sum = sliding_window_view(squares, size, axis=1).sum(axis=-1)
    alpha, beta, k = (float(_val(op, n, d)) for n, d in (("alpha", 1e-4), ("beta", 0.75), ("k", 1.0)))
    return x / np.power(k + alpha / size * window_sum, beta)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


@_register("silu")
def _silu(op: Any) -> np.ndarray:
    x = _f32(op, "x")
    return x * _sigmoid(x)


@_register("thresholded_relu")
def _thresholded_relu(op: Any) -> np.ndarray:
    x = _f32(op, "x")
    return np.where(x >= np.float32(_val(op, "alpha", 1.0)), x, np.float32(0))


# --- resizing --------------------------------------------------------------------------------


def _grid(in_size: int, out_size: int, mode: str) -> np.ndarray:
    """Source coordinates of each output sample (the sampling modes of iOS15 resize_bilinear)."""
    i = np.arange(out_size, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if out_size == 1:
            grid = np.array([(in_size - 1) / 2 if mode == "ALIGN_CORNERS" else 0.0])
        else:
            grid = i * (in_size - 1) / (out_size - 1)
    elif mode == "DEFAULT":
        grid = i * ((in_size - in_size / out_size) / (out_size - 1)) if out_size > 1 else np.zeros(1)
    elif mode == "OFFSET_CORNERS":
        delta = max(1, in_size - 1) / out_size
        grid = 0.5 * delta + i * delta
    elif mode == "UNALIGN_CORNERS":
        spacing = in_size / out_size
        grid = i * spacing + 0.5 * spacing - 0.5
    elif mode == "ASYMMETRIC":  # upsample_bilinear with align_corners=False, half_pixel_centers=False
        grid = i * in_size / out_size
    else:
        raise NotImplementedError(f"sampling mode '{mode}'")
    return np.clip(grid, 0, in_size - 1)


def _linear_along(x: np.ndarray, axis: int, grid: np.ndarray) -> np.ndarray:
    lo = np.floor(grid).astype(np.int64)
    hi = np.minimum(lo + 1, x.shape[axis] - 1)
    shape = [1] * x.ndim
    shape[axis] = -1
    frac = (grid - lo).astype(np.float32).reshape(shape)
    below, above = np.take(x, lo, axis=axis), np.take(x, hi, axis=axis)
    return below * (1 - frac) + above * frac


def _bilinear(x: np.ndarray, out_hw: tuple, mode: str) -> np.ndarray:
    y = _linear_along(x, x.ndim - 2, _grid(x.shape[-2], out_hw[0], mode))
    return _linear_along(y, x.ndim - 1, _grid(x.shape[-1], out_hw[1], mode))


def _nearest_index(in_size: int, out_size: int, scale: float | None = None) -> np.ndarray:
    step = 1.0 / scale if scale else in_size / out_size
    return np.minimum(np.floor(np.arange(out_size) * step).astype(np.int64), in_size - 1)


@_register("upsample_nearest_neighbor")
def _upsample_nearest(op: Any) -> np.ndarray:
    x = _f32(op, "x")
    scale_h, scale_w = float(_val(op, "scale_factor_height", 1)), float(_val(op, "scale_factor_width", 1))
    out_h, out_w = _sizes(op, [math.floor(x.shape[-2] * scale_h), math.floor(x.shape[-1] * scale_w)])
    rows = _nearest_index(x.shape[-2], out_h, scale_h)
    cols = _nearest_index(x.shape[-1], out_w, scale_w)
    return np.take(np.take(x, rows, axis=-2), cols, axis=-1)


@_register("resize_nearest_neighbor")
def _resize_nearest(op: Any) -> np.ndarray:
    x = _f32(op, "x")
    out_h, out_w = _target_size(op)
    rows, cols = _nearest_index(x.shape[-2], out_h), _nearest_index(x.shape[-1], out_w)
    return np.take(np.take(x, rows, axis=-2), cols, axis=-1)


@_register("upsample_bilinear")
def _upsample_bilinear(op: Any) -> np.ndarray:
    align = bool(_val(op, "align_corners", True))
    half_pixel = bool(_val(op, "half_pixel_centers", not align))
    mode = "STRICT_ALIGN_CORNERS" if align else ("UNALIGN_CORNERS" if half_pixel else "ASYMMETRIC")
    x = _f32(op, "x")
    scales = (float(_val(op, "scale_factor_height", 1)), float(_val(op, "scale_factor_width", 1)))
    return _bilinear(x, _sizes(op, [math.floor(n * f) for n, f in zip(x.shape[-2:], scales)]), mode)


@_register("resize_bilinear")
def _resize_bilinear(op: Any) -> np.ndarray:
    return _bilinear(_f32(op, "x"), _target_size(op), str(_val(op, "sampling_mode", "DEFAULT")))


def _target_size(op: Any) -> tuple[int, ...]:
    return _sizes(op, [int(_val(op, "target_size_height")), int(_val(op, "target_size_width"))])


@_register("resize")
def _resize(op: Any) -> np.ndarray:
    x = np.asarray(op.x.val)
    dims = int(_val(op, "resized_dims"))
    out_shape = x.shape[: x.ndim - dims] + _sizes(op, [int(v) for v in np.asarray(op.shape.val).ravel()[-dims:]])
    mode = str(_val(op, "sampling_mode", "DEFAULT"))
    nearest = str(_val(op, "interpolation_mode", "LINEAR")) == "NEAREST_NEIGHBOR"
    if nearest and mode != "DEFAULT":
        raise NotImplementedError(f"nearest-neighbour resize with sampling mode '{mode}'")
    y = x if nearest else x.astype(np.float32)
    for axis in range(x.ndim - dims, x.ndim):
        if nearest:
            y = np.take(y, _nearest_index(x.shape[axis], out_shape[axis]), axis=axis)
        else:
            y = _linear_along(y, axis, _grid(x.shape[axis], out_shape[axis], mode))
    return y


# --- resampling (grid_sample) ----------------------------------------------------------------
# MIL `resample` (iOS15+): x (B, C, H, W) sampled at coordinates (B, H2, W2, 2), given as (x, y).
# Positions are worked out in pixel units, where pixel i's centre is at i; the padding rule then
# says what lies outside the image. torch's grid_sample maps to it (frontend `grid_sampler`):
# zeros -> constant 0, border -> border, reflection -> reflection (align_corners=True) or
# symmetric (align_corners=False), always with normalized_minus_one_to_one coordinates.


def _pixel_positions(coords: np.ndarray, size: int, mode: str, align_corners: bool) -> np.ndarray:
    """Coordinates along one axis as pixel positions."""
    if mode == "unnormalized":
        # Already pixel positions; align_corners is ignored, as the sibling op `affine` documents
        # (and as TensorFlow's Resampler, the frontend that emits this mode, means it).
        return coords
    if mode == "normalized_minus_one_to_one":
        unit = (coords + 1) / 2
    elif mode == "normalized_zero_to_one":
        unit = coords
    else:
        raise NotImplementedError(f"resample coordinates_mode '{mode}'")
    # align_corners: the extremes are the centres of the corner pixels; otherwise their outer edges.
    return unit * (size - 1) if align_corners else unit * size - 0.5


def _mirror(positions: np.ndarray, low: float, high: float) -> np.ndarray:
    """Fold positions into [low, high] by mirroring at both ends, as often as it takes."""
    span = high - low
    if span <= 0:
        return np.full_like(positions, low)
    distance = np.abs(positions - low)
    flips = np.floor(distance / span)
    extra = distance - flips * span
    return np.where(flips % 2 == 0, low + extra, high - extra)


def _fold_into_image(positions: np.ndarray, size: int, padding: str) -> np.ndarray:
    """Positions outside the image moved to the in-image position whose value the padding repeats.

    reflection mirrors about the edge pixels' centres (|1 2 3| -> 3 2 |1 2 3| 2 1), symmetric about
    their outer edges (2 1 |1 2 3| 3 2); interpolating the folded position is interpolating the
    padded image. constant is left to the sampler (outside is padding_value).
    """
    if padding == "constant":
        return positions
    if padding == "reflection":
        positions = _mirror(positions, 0.0, size - 1.0)
    elif padding == "symmetric":
        positions = _mirror(positions, -0.5, size - 0.5)
    elif padding != "border":
        raise NotImplementedError(f"resample padding_mode '{padding}'")
    return np.clip(positions, 0, size - 1)


def _pixels_at(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, outside: float) -> np.ndarray:
    """x[b, :, rows[b], cols[b]] as (B, C, H2, W2); `outside` where (row, col) is not in the image."""
    height, width = x.shape[-2:]
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    batch = np.arange(x.shape[0]).reshape(-1, 1, 1)
    # The advanced indices around the channel slice put their dims first: (B, H2, W2, C).
    values = np.moveaxis(x[batch, :, np.clip(rows, 0, height - 1), np.clip(cols, 0, width - 1)], -1, 1)
    return np.where(inside[:, None], values, np.float32(outside))


@_register("resample")
def _resample(op: Any) -> np.ndarray:
    x, coords = _f32(op, "x"), _f32(op, "coordinates")
    if x.shape[0] != coords.shape[0]:  # a flexible batch the declared shapes could not check
        raise RuntimeError(f"resample '{op.name}': x has batch {x.shape[0]}, coordinates {coords.shape[0]}")
    mode, padding = str(_val(op, "coordinates_mode")), str(_val(op, "padding_mode"))
    align_corners = bool(_val(op, "align_corners"))
    # Other paddings fold every position into the image; only a zero-weight bilinear neighbour
    # past the last pixel is then outside, and must not bring padding_value (say inf) along.
    outside = float(_val(op, "padding_value", 0.0)) if padding == "constant" else 0.0
    height, width = x.shape[-2:]
    cols = _fold_into_image(_pixel_positions(coords[..., 0], width, mode, align_corners), width, padding)
    rows = _fold_into_image(_pixel_positions(coords[..., 1], height, mode, align_corners), height, padding)
    sampling = str(_val(op, "sampling_mode"))
    if sampling == "nearest":
        # The MIL docs leave ties open; round half to even, like torch's nearbyint.
        return _pixels_at(x, np.rint(rows).astype(np.int64), np.rint(cols).astype(np.int64), outside)
    if sampling != "bilinear":
        raise NotImplementedError(f"resample sampling_mode '{sampling}'")
    top, left = np.floor(rows), np.floor(cols)
    down, right = (rows - top)[:, None], (cols - left)[:, None]
    top, left = top.astype(np.int64), left.astype(np.int64)
    return (1 - down) * (
        (1 - right) * _pixels_at(x, top, left, outside) + right * _pixels_at(x, top, left + 1, outside)
    ) + down * ((1 - right) * _pixels_at(x, top + 1, left, outside) + right * _pixels_at(x, top + 1, left + 1, outside))


# --- recurrent -------------------------------------------------------------------------------

_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "relu": lambda v: np.maximum(v, 0),
    "linear": lambda v: v,
}


def _activation(name: Any) -> Callable[[np.ndarray], np.ndarray]:
    # hard_sigmoid/scaled_tanh take alpha/beta the op cannot pass: their constants are undocumented.
    fn = _ACTIVATIONS.get(str(name).lower())
    if fn is None:
        raise NotImplementedError(f"recurrent activation '{name}'")
    return fn


def _lstm_direction(x: np.ndarray, h: np.ndarray, c: np.ndarray, params: dict, acts: list, reverse: bool) -> tuple:
    gate_act, cell_act, out_act = acts
    w_ih, w_hh, bias, peephole = params["w_ih"], params["w_hh"], params["bias"], params["peephole"]
    p_i, p_f, p_o = np.split(peephole, 3)
    projected = x @ w_ih.T + bias  # input projection of every step at once: (s, b, 4H)
    outputs = np.zeros(x.shape[:2] + (w_hh.shape[1],), np.float32)
    for t in reversed(range(x.shape[0])) if reverse else range(x.shape[0]):
        i, f, o, z = np.split(projected[t] + h @ w_hh.T, 4, axis=-1)  # ifoz gate order
        i, f = gate_act(i + p_i * c), gate_act(f + p_f * c)
        c = f * c + i * cell_act(z)
        h = gate_act(o + p_o * c) * out_act(c)
        outputs[t] = h
    return outputs, h, c


def _lstm_params(op: Any, suffix: str, hidden: int) -> dict:
    bias, peephole = _val(op, "bias" + suffix), _val(op, "peephole" + suffix)
    return {
        "w_ih": _f32(op, "weight_ih" + suffix),
        "w_hh": _f32(op, "weight_hh" + suffix),
        "bias": np.zeros(4 * hidden, np.float32) if bias is None else np.asarray(bias, np.float32),
        "peephole": np.zeros(3 * hidden, np.float32) if peephole is None else np.asarray(peephole, np.float32),
    }


@_register("lstm")
def _lstm(op: Any) -> tuple:
    if _val(op, "clip") is not None:
        raise NotImplementedError("lstm clip: whether the cell state or the cell gate is clipped is ambiguous")
    x, h0, c0 = _f32(op, "x"), _f32(op, "initial_h"), _f32(op, "initial_c")
    hidden, direction = op.weight_hh.shape[1], str(_val(op, "direction", "forward"))
    acts = [
        _activation(_val(op, name, default))
        for name, default in (("recurrent_activation", "sigmoid"), ("cell_activation", "tanh"), ("activation", "tanh"))
    ]
    runs = [("", False), ("_back", True)] if direction == "bidirectional" else [("", direction == "reverse")]
    results = []
    for k, (suffix, reverse) in enumerate(runs):
        part = slice(k * hidden, (k + 1) * hidden)
        results.append(_lstm_direction(x, h0[:, part], c0[:, part], _lstm_params(op, suffix, hidden), acts, reverse))
    sequence, h, c = (np.concatenate(parts, axis=-1) for parts in zip(*results))
    return (sequence if bool(_val(op, "output_sequence", False)) else h[None]), h, c


@_register("rnn")
def _rnn(op: Any) -> tuple:
    x, h = _f32(op, "x"), _f32(op, "initial_h")
    w_ih, w_hh = _f32(op, "weight_ih"), _f32(op, "weight_hh")
    bias = np.asarray(_val(op, "bias", 0.0), np.float32)
    act = _activation(_val(op, "activation", "tanh"))
    reverse = str(_val(op, "direction", "forward")) == "reverse"
    projected = x @ w_ih.T + bias
    outputs = np.zeros(x.shape[:2] + (w_hh.shape[0],), np.float32)
    for t in reversed(range(x.shape[0])) if reverse else range(x.shape[0]):
        h = act(projected[t] + h @ w_hh.T)
        outputs[t] = h
    return (outputs if bool(_val(op, "output_sequence", False)) else h[None]), h


# --- tensor manipulation ---------------------------------------------------------------------

# Programs with flexible input shapes: coremltools' value_inference for these reads the declared
# (symbolic) shapes, so they run from the runtime arrays instead.


@_register("shape")
def _shape(op: Any) -> np.ndarray:
    return np.array(np.shape(op.x.val), np.int32)


@_register("reshape")
def _reshape(op: Any) -> np.ndarray:
    x = np.asarray(op.x.val)
    shape = [int(s) for s in np.asarray(op.shape.val).ravel()]
    # A 0 copies an input dimension, counted from the right (iOS17); with equal ranks, as in the
    # iOS15 rule, that is the dimension at the same index. Out of range, it is 1.
    for i, size in enumerate(shape):
        if size == 0:
            j = x.ndim - (len(shape) - i)
            shape[i] = x.shape[j] if 0 <= j < x.ndim else 1
    return x.reshape(shape)


@_register("expand_dims")
def _expand_dims(op: Any) -> np.ndarray:
    x = np.asarray(op.x.val)
    out_rank = x.ndim + len(op.axes.val)
    return np.expand_dims(x, tuple(sorted(int(a) % out_rank for a in op.axes.val)))


@_register("flatten2d")
def _flatten2d(op: Any) -> np.ndarray:
    x = np.asarray(op.x.val)
    axis = int(op.axis.val) + (x.ndim if op.axis.val < 0 else 0)
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


@_register("fill_like")
def _fill_like(op: Any) -> np.ndarray:
    return np.full(np.shape(op.ref_tensor.val), _val(op, "value", 0.0))


@_register("l2_norm")
def _l2_norm(op: Any) -> np.ndarray:
    """Normalized over the last three axes, the leading ones being batch (coremltools' definition)."""
    x = _f32(op, "x")
    rows = x.reshape(int(np.prod(x.shape[: x.ndim - 3])), -1)
    squares = np.sum(rows * rows, axis=1, keepdims=True) + float(_val(op, "epsilon", 1e-6))
    return (rows / np.sqrt(squares)).reshape(x.shape)


@_register("slice_by_size")
def _slice_by_size(op: Any) -> np.ndarray:
    x = np.asarray(op.x.val)
    slices = []
    for axis, (begin, size) in enumerate(zip(np.asarray(op.begin.val).ravel(), np.asarray(op.size.val).ravel())):
        start = int(begin) + (x.shape[axis] if begin < 0 else 0)
        slices.append(slice(start, start + int(size)) if size > 0 else slice(start, None))  # size -1: to the end
    return x[tuple(slices)]


@_register("slice_by_index")
def _slice_by_index(op: Any) -> np.ndarray:
    from coremltools.converters.mil.mil.ops.defs._utils import get_squeeze_axes, solve_slice_by_index_slice

    x = np.asarray(op.x.val)
    params = [_val(op, name) for name in ("stride", "begin_mask", "end_mask", "squeeze_mask")]
    slices = solve_slice_by_index_slice(x.shape, op.begin.val, op.end.val, *params)
    squeeze = get_squeeze_axes(params[3], x.ndim)
    result = x[slices]
    return np.squeeze(result, axis=tuple(squeeze)) if squeeze else result


@_register("crop")
def _crop(op: Any) -> np.ndarray:
    x = np.asarray(op.x.val)
    (top, bottom), (left, right) = (_ints(_val(op, n), 2, 0) for n in ("crop_height", "crop_width"))
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


@_register("pixel_shuffle")
def _pixel_shuffle(op: Any) -> np.ndarray:
    x, r = np.asarray(op.x.val), int(_val(op, "upscale_factor"))
    n, c, h, w = x.shape
    return x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c // (r * r), h * r, w * r)


@_register("pixel_unshuffle")
def _pixel_unshuffle(op: Any) -> np.ndarray:
    x, r = np.asarray(op.x.val), int(_val(op, "downscale_factor"))
    n, c, h, w = x.shape
    return x.reshape(n, c, h // r, r, w // r, r).transpose(0, 1, 3, 5, 2, 4).reshape(n, c * r * r, h // r, w // r)


@_register("cumsum")
def _cumsum(op: Any) -> np.ndarray:
    x, axis = np.asarray(op.x.val), int(_val(op, "axis", 0))
    reverse, exclusive = bool(_val(op, "reverse", False)), bool(_val(op, "exclusive", False))
    data = np.flip(x, axis) if reverse else x
    total = np.cumsum(data, axis=axis)
    if exclusive:
        total = total - data
    return np.flip(total, axis) if reverse else total


@_register("reverse_sequence")
def _reverse_sequence(op: Any) -> np.ndarray:
    x, lengths = np.asarray(op.x.val), np.asarray(op.lengths.val).ravel()
    seq_axis, batch_axis = int(_val(op, "seq_axis", 0)), int(_val(op, "batch_axis", 0))
    out = np.moveaxis(x.copy(), (batch_axis, seq_axis), (0, 1))
    for b, length in enumerate(lengths):
        out[b, :length] = out[b, :length][::-1].copy()
    return np.moveaxis(out, (0, 1), (batch_axis, seq_axis))


@_register("one_hot")
def _one_hot(op: Any) -> np.ndarray:
    indices, size = np.asarray(op.indices.val), int(_val(op, "one_hot_vector_size"))
    axis = int(_val(op, "axis", -1))
    axis = axis + indices.ndim + 1 if axis < 0 else axis
    hot = np.expand_dims(indices, axis) == np.arange(size).reshape(
        [-1 if a == axis else 1 for a in range(indices.ndim + 1)]
    )
    return np.where(hot, _val(op, "on_value", 1), _val(op, "off_value", 0))


@_register("gather_nd")
def _gather_nd(op: Any) -> np.ndarray:
    x, indices, batch = np.asarray(op.x.val), np.asarray(op.indices.val), int(_val(op, "batch_dims", 0))
    if batch == 0:
        return x[tuple(np.moveaxis(indices, -1, 0))]
    flat_x = x.reshape((-1,) + x.shape[batch:])
    flat_i = indices.reshape((-1,) + indices.shape[batch:])
    gathered = np.stack([xb[tuple(np.moveaxis(ib, -1, 0))] for xb, ib in zip(flat_x, flat_i)])
    return gathered.reshape(x.shape[:batch] + gathered.shape[1:])


_SCATTER_UFUNCS = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "max": np.maximum,
    "min": np.minimum,
}


def _scatter_into(out: np.ndarray, where: tuple | np.ndarray, updates: np.ndarray, mode: str) -> np.ndarray:
    # ufunc.at accumulates repeated indices, which plain fancy-index assignment would not.
    if mode == "update":
        out[where] = updates
    elif mode in _SCATTER_UFUNCS:
        _SCATTER_UFUNCS[mode].at(out, where, updates)
    else:
        raise NotImplementedError(f"scatter mode '{mode}'")
    return out


def _scatter_copy(op: Any) -> np.ndarray:
    data = np.array(op.data.val, copy=True)
    return data.astype(np.float32) if data.dtype == np.float16 else data


@_register("scatter")
def _scatter(op: Any) -> np.ndarray:
    out, indices = _scatter_copy(op), np.asarray(op.indices.val)
    axis = int(_val(op, "axis", 0)) % out.ndim
    updates = np.moveaxis(np.asarray(op.updates.val), list(range(axis, axis + indices.ndim)), list(range(indices.ndim)))
    _scatter_into(np.moveaxis(out, axis, 0), indices, updates, str(_val(op, "mode", "add")))
    return out


@_register("scatter_nd")
def _scatter_nd(op: Any) -> np.ndarray:
    out, indices = _scatter_copy(op), np.asarray(op.indices.val)
    return _scatter_into(
        out, tuple(np.moveaxis(indices, -1, 0)), np.asarray(op.updates.val), str(_val(op, "mode", "add"))
    )


@_register("scatter_along_axis")
def _scatter_along_axis(op: Any) -> np.ndarray:
    out, indices = _scatter_copy(op), np.asarray(op.indices.val)
    axis = int(_val(op, "axis", 0)) % out.ndim
    grid = list(np.indices(indices.shape, sparse=True))
    grid[axis] = indices
    return _scatter_into(out, tuple(grid), np.asarray(op.updates.val), str(_val(op, "mode", "add")))


# --- quantization and compressed weights -----------------------------------------------------


@_register("dequantize")
def _dequantize(op: Any) -> np.ndarray:
    data = np.asarray(op.input.val, np.float32)
    scale, zero = np.asarray(op.scale.val, np.float32), np.asarray(_val(op, "zero_point", 0), np.float32)
    axis = _val(op, "axis")
    if axis is not None and scale.ndim == 1:
        shape = [1] * data.ndim
        shape[int(axis)] = -1
        scale = scale.reshape(shape)
        zero = zero.reshape(shape) if zero.ndim == 1 else zero
    return (data - zero) * scale


@_register(
    "constexpr_affine_dequantize",
    "constexpr_lut_to_dense",
    "constexpr_sparse_to_dense",
    "constexpr_blockwise_shift_scale",
    "constexpr_lut_to_sparse",
    "constexpr_sparse_blockwise_shift_scale",
    "constexpr_cast",
)
def _constexpr(op: Any) -> Any:
    # coremltools' own decompression of the blobs read from the package is the reference here:
    # the ops' data (indices, LUTs, masks, scales) all come from the shipped weight file.
    return op.materialized_val_inference()
