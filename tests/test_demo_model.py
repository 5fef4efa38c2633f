"""Tests for the built-in demo model (edgepack.demo): data, weights, accuracy, tracing."""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pytest
import torch

from edgepack import demo

# Split sizes documented in edgepack/demo/DATA.md.
SPLIT_SIZES = {"train": 1258, "calib": 179, "eval": 360}


@pytest.fixture(scope="module")
def model() -> demo.DigitNet:
    return demo.make_model()


@pytest.fixture(scope="module")
def eval_split() -> tuple[torch.Tensor, torch.Tensor]:
    return demo.load_split("eval")


@pytest.fixture(scope="module")
def npz() -> dict[str, np.ndarray]:
    with files("edgepack.demo").joinpath("digits.npz").open("rb") as f, np.load(f) as data:
        return {k: data[k] for k in data.files}


def test_shipped_weights_load_with_weights_only() -> None:
    with files("edgepack.demo").joinpath("weights.pt").open("rb") as f:
        state = torch.load(f, weights_only=True)
    fresh = demo.DigitNet()
    fresh.load_state_dict(state)  # strict: every key present, no extras
    assert set(state) == set(fresh.state_dict())


def test_make_model_is_in_eval_mode(model: demo.DigitNet) -> None:
    assert not model.training
    assert all(not m.training for m in model.modules())


def test_data_file_contents(npz: dict[str, np.ndarray]) -> None:
    assert npz["images"].shape == (1797, 8, 8) and npz["images"].dtype == np.uint8
    assert npz["images"].max() == 16 and npz["images"].min() == 0
    assert npz["labels"].shape == (1797,)
    assert sorted(np.unique(npz["labels"]).tolist()) == list(range(10))


def test_splits_disjoint_and_cover_documented_sizes(npz: dict[str, np.ndarray]) -> None:
    idx = {name: npz[f"{name}_idx"] for name in demo.SPLITS}
    assert {name: len(v) for name, v in idx.items()} == SPLIT_SIZES
    union = np.concatenate(list(idx.values()))
    assert len(np.unique(union)) == len(union) == 1797  # disjoint and exhaustive
    # Stratified: every class appears in every split.
    for v in idx.values():
        assert len(np.unique(npz["labels"][v])) == 10


def test_load_split_shapes_and_dtypes() -> None:
    for name, size in SPLIT_SIZES.items():
        x, y = demo.load_split(name)
        assert x.shape == (size, 1, 32, 32) and x.dtype == torch.float32
        assert y.shape == (size,) and y.dtype == torch.int64


def test_load_split_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="train.*calib.*eval"):
        demo.load_split("nope")


def test_preprocess_shape_dtype_and_normalization() -> None:
    images = np.zeros((3, 8, 8), dtype=np.uint8)
    images[1] = 16
    x = demo.preprocess(images)
    assert x.shape == (3, 1, 32, 32) and x.dtype == torch.float32
    # Constant images stay constant through bilinear resize, so values are exact.
    torch.testing.assert_close(x[0], torch.full((1, 32, 32), -demo.MEAN / demo.STD))
    torch.testing.assert_close(x[1], torch.full((1, 32, 32), (1 - demo.MEAN) / demo.STD))


def test_preprocess_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"\(N, 8, 8\)"):
        demo.preprocess(np.zeros((2, 16, 16), dtype=np.uint8))


def test_public_constants() -> None:
    assert demo.INPUT_SHAPE == (1, 1, 32, 32)
    assert demo.LABELS == [str(i) for i in range(10)]
    assert demo.PREPROCESSING["mean"] == demo.MEAN and demo.PREPROCESSING["std"] == demo.STD
    assert demo.PREPROCESSING["resize"] == [32, 32]


def test_parameter_count_in_budget(model: demo.DigitNet) -> None:
    n = sum(p.numel() for p in model.parameters())
    assert 10_000 <= n <= 60_000


def test_eval_accuracy(model: demo.DigitNet, eval_split: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = eval_split
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (len(y), len(demo.LABELS))
    acc = (logits.argmax(1) == y).float().mean().item()
    assert acc >= 0.95, f"eval accuracy {acc:.4f}"


def test_trace_matches_eager(model: demo.DigitNet, eval_split: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, _ = eval_split
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.zeros(demo.INPUT_SHAPE))
        # Batch of 64 differs from the batch-1 trace input: checks no shape was baked in.
        torch.testing.assert_close(traced(x[:64]), model(x[:64]), atol=1e-5, rtol=0)
        torch.testing.assert_close(traced(x[:1]), model(x[:1]), atol=1e-5, rtol=0)
