"""`python -m edgepack.benchmarks.coverage [--only NAME ...] [--jobs N] [--out DIR]`: how many models as users have
them edgepack builds. Each architecture is made from a tiny config with random weights (no downloads: needs the
`zoo` extra, `pip install ".[zoo]"`), called with its default forward arguments (ModelOutput outputs, caches
on), and built with `edgepack.pipeline.build` for the `android`, `ios` and `iot` targets with their format
settings unchanged (only the timing protocol is shortened: latency is not what this measures). Every artifact
that passes is run again on a fresh input it was never checked on and compared with eager PyTorch at the
artifact's own tolerance: a mismatch there fails it. Writes coverage.md and coverage.json; one process per
architecture (a converter crash takes only its row)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..hostarch import host_cpu
from ..paths import scratch_folder

TARGETS = ("android", "ios", "iot")


def _columns() -> tuple[str, ...]:
    """target/format for every format the built-in targets emit, in the targets' order (read from their files, so
    a format added to a target gets its column)."""
    import tomllib

    return tuple(
        f"{target}/{name}" for target in TARGETS for name in tomllib.loads(_target_text(target)).get("formats", {})
    )


FRESH_SEED = 4242
TEXT = "input_ids=1x16:int64:0..100"
IMAGE = "pixel_values=1x3x32x32"
AUDIO = "input_values=1x1600"
STEP = "input_ids=1xSEQ=2:int64:0..100"


def _past(heads: int, head_dim: int, layers: int = 2) -> tuple[str, ...]:
    return tuple(
        f"past_key_values_{n}_{part}=1x{heads}xPAST=8x{head_dim}" for n in range(layers) for part in ("key", "value")
    )


@dataclass(frozen=True)
class Arch:
    name: str
    family: str
    make: Callable[[], Any]
    inputs: tuple[str, ...]


def _hf(config_class: str, model_class: str, **config: Any) -> Callable[[], Any]:
    def make():
        import torch
        import transformers

        torch.manual_seed(0)
        model = getattr(transformers, model_class)(getattr(transformers, config_class)(**config))
        return model.eval()

    return make


_TXT = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)
_LM = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)
_VIT = dict(
    image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)


def _architectures() -> list[Arch]:
    a = Arch
    return [
        # vision CNNs
        a(
            "resnet",
            "vision CNN",
            _hf(
                "ResNetConfig",
                "ResNetForImageClassification",
                embedding_size=16,
                hidden_sizes=[16, 32],
                depths=[1, 1],
                num_labels=3,
            ),
            (IMAGE,),
        ),
        a(
            "regnet",
            "vision CNN",
            _hf(
                "RegNetConfig",
                "RegNetForImageClassification",
                embedding_size=16,
                hidden_sizes=[16, 32],
                depths=[1, 1],
                groups_width=8,
                num_labels=3,
            ),
            (IMAGE,),
        ),
        a(
            "convnext",
            "vision CNN",
            _hf(
                "ConvNextConfig",
                "ConvNextForImageClassification",
                hidden_sizes=[16, 32],
                depths=[1, 1],
                num_stages=2,
                num_labels=3,
            ),
            (IMAGE,),
        ),
        a(
            "convnextv2",
            "vision CNN",
            _hf(
                "ConvNextV2Config",
                "ConvNextV2ForImageClassification",
                hidden_sizes=[16, 32],
                depths=[1, 1],
                num_stages=2,
                num_labels=3,
            ),
            (IMAGE,),
        ),
        a(
            "mobilenet_v2",
            "vision CNN",
            _hf(
                "MobileNetV2Config",
                "MobileNetV2ForImageClassification",
                depth_multiplier=0.25,
                image_size=32,
                num_labels=3,
            ),
            (IMAGE,),
        ),
        a(
            "mobilenet_v1",
            "vision CNN",
            _hf(
                "MobileNetV1Config",
                "MobileNetV1ForImageClassification",
                depth_multiplier=0.25,
                image_size=32,
                num_labels=3,
            ),
            (IMAGE,),
        ),
        a(
            "efficientnet",
            "vision CNN",
            _hf(
                "EfficientNetConfig",
                "EfficientNetForImageClassification",
                image_size=32,
                width_coefficient=0.25,
                depth_coefficient=0.25,
                hidden_dim=320,  # round_filters(1280) at width 0.25: the top conv's channels
                num_labels=3,
            ),
            (IMAGE,),
        ),
        # vision transformers
        a("vit", "vision transformer", _hf("ViTConfig", "ViTForImageClassification", num_labels=3, **_VIT), (IMAGE,)),
        a(
            "deit",
            "vision transformer",
            _hf("DeiTConfig", "DeiTForImageClassification", num_labels=3, **_VIT),
            (IMAGE,),
        ),
        a(
            "beit",
            "vision transformer",
            _hf("BeitConfig", "BeitForImageClassification", num_labels=3, **_VIT),
            (IMAGE,),
        ),
        a("dinov2", "vision transformer", _hf("Dinov2Config", "Dinov2Model", **_VIT), (IMAGE,)),
        a(
            "levit",
            "vision transformer",
            _hf(
                "LevitConfig",
                "LevitForImageClassification",
                image_size=32,
                patch_size=16,
                hidden_sizes=[32, 48, 64],
                num_attention_heads=[1, 2, 2],
                depths=[1, 1, 1],
                key_dim=[8, 8, 8],
                num_labels=3,
            ),
            (IMAGE,),
        ),
        a(
            "mobilevit",
            "vision transformer",
            _hf(
                "MobileViTConfig",
                "MobileViTForImageClassification",
                image_size=32,
                patch_size=2,
                hidden_sizes=[16, 24, 32],
                neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48],
                num_labels=3,
            ),
            (IMAGE,),
        ),
        # hierarchical / windowed
        a(
            "swin",
            "windowed transformer",
            _hf(
                "SwinConfig",
                "SwinForImageClassification",
                image_size=32,
                patch_size=4,
                embed_dim=16,
                depths=[1, 1],
                num_heads=[1, 2],
                window_size=4,
                num_labels=3,
            ),
            (IMAGE,),
        ),
        a(
            "pvt",
            "hierarchical transformer",
            _hf(
                "PvtConfig",
                "PvtForImageClassification",
                image_size=32,
                num_encoder_blocks=2,
                depths=[1, 1],
                sequence_reduction_ratios=[2, 1],
                hidden_sizes=[16, 32],
                patch_sizes=[4, 2],
                strides=[4, 2],
                num_attention_heads=[1, 2],
                mlp_ratios=[2, 2],
                num_labels=3,
            ),
            (IMAGE,),
        ),
        # segmentation
        a(
            "segformer",
            "segmentation",
            _hf(
                "SegformerConfig",
                "SegformerForSemanticSegmentation",
                num_encoder_blocks=2,
                depths=[1, 1],
                sr_ratios=[2, 1],
                hidden_sizes=[16, 32],
                patch_sizes=[7, 3],
                strides=[4, 2],
                num_attention_heads=[1, 2],
                mlp_ratios=[2, 2],
                decoder_hidden_size=32,
                num_labels=3,
            ),
            (IMAGE,),
        ),
        a(
            "mobilevit_seg",
            "segmentation",
            _hf(
                "MobileViTConfig",
                "MobileViTForSemanticSegmentation",
                image_size=32,
                patch_size=2,
                hidden_sizes=[16, 24, 32],
                neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48],
                aspp_out_channels=16,
                num_labels=3,
            ),
            (IMAGE,),
        ),
        # encoder-only text
        a("bert", "text encoder", _hf("BertConfig", "BertForSequenceClassification", num_labels=3, **_TXT), (TEXT,)),
        a(
            "roberta",
            "text encoder",
            _hf(
                "RobertaConfig",
                "RobertaForSequenceClassification",
                num_labels=3,
                pad_token_id=1,
                **{**_TXT, "max_position_embeddings": 66},
            ),
            (TEXT,),
        ),
        a(
            "distilbert",
            "text encoder",
            _hf(
                "DistilBertConfig",
                "DistilBertForSequenceClassification",
                vocab_size=100,
                dim=32,
                n_layers=2,
                n_heads=2,
                hidden_dim=64,
                max_position_embeddings=64,
                num_labels=3,
            ),
            (TEXT,),
        ),
        a(
            "albert",
            "text encoder",
            _hf("AlbertConfig", "AlbertForSequenceClassification", embedding_size=16, num_labels=3, **_TXT),
            (TEXT,),
        ),
        a(
            "electra",
            "text encoder",
            _hf("ElectraConfig", "ElectraForSequenceClassification", embedding_size=16, num_labels=3, **_TXT),
            (TEXT,),
        ),
        a(
            "deberta_v2",
            "text encoder",
            _hf("DebertaV2Config", "DebertaV2ForSequenceClassification", num_labels=3, **_TXT),
            (TEXT,),
        ),
        a("mpnet", "text encoder", _hf("MPNetConfig", "MPNetModel", **_TXT), (TEXT,)),
        # decoder-only text (use_cache left at its default)
        a(
            "gpt2",
            "decoder LM",
            _hf("GPT2Config", "GPT2LMHeadModel", vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64),
            (TEXT,),
        ),
        a("llama", "decoder LM", _hf("LlamaConfig", "LlamaForCausalLM", num_key_value_heads=1, **_LM), (TEXT,)),
        # a decoding step: the cache the prompt returned fed back in (2 layers; heads x head size of each model)
        a(
            "gpt2_step",
            "decoder LM",
            _hf("GPT2Config", "GPT2LMHeadModel", vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64),
            (STEP, *_past(heads=2, head_dim=16)),
        ),
        a(
            "llama_step",
            "decoder LM",
            _hf("LlamaConfig", "LlamaForCausalLM", num_key_value_heads=1, **_LM),
            (STEP, *_past(heads=1, head_dim=16)),
        ),
        a("qwen2", "decoder LM", _hf("Qwen2Config", "Qwen2ForCausalLM", num_key_value_heads=1, **_LM), (TEXT,)),
        a("mistral", "decoder LM", _hf("MistralConfig", "MistralForCausalLM", num_key_value_heads=1, **_LM), (TEXT,)),
        a(
            "opt",
            "decoder LM",
            _hf(
                "OPTConfig",
                "OPTForCausalLM",
                vocab_size=100,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                ffn_dim=64,
                word_embed_proj_dim=32,
                max_position_embeddings=64,
            ),
            (TEXT,),
        ),
        a("gpt_neox", "decoder LM", _hf("GPTNeoXConfig", "GPTNeoXForCausalLM", **_LM), (TEXT,)),
        # encoders of encoder-decoders
        a(
            "t5_encoder",
            "encoder of enc-dec",
            _hf("T5Config", "T5EncoderModel", vocab_size=100, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2),
            (TEXT,),
        ),
        # audio
        a(
            "wav2vec2",
            "audio",
            _hf(
                "Wav2Vec2Config",
                "Wav2Vec2Model",
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                conv_dim=[16, 16],
                conv_stride=[5, 2],
                conv_kernel=[10, 3],
                num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=2,
            ),
            (AUDIO,),
        ),
        a(
            "hubert",
            "audio",
            _hf(
                "HubertConfig",
                "HubertModel",
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                conv_dim=[16, 16],
                conv_stride=[5, 2],
                conv_kernel=[10, 3],
                num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=2,
            ),
            (AUDIO,),
        ),
        a(
            "whisper_encoder",
            "audio",
            _hf(
                "WhisperConfig",
                "WhisperForAudioClassification",
                num_mel_bins=16,
                d_model=32,
                encoder_layers=2,
                encoder_attention_heads=2,
                encoder_ffn_dim=64,
                max_source_positions=32,
                num_labels=3,
            ),
            ("input_features=1x16x64",),
        ),
        # patterns users bring that are not transformers
        a("yolo_detect", "pattern", _pattern("make_tiny_yolo"), ("image=1x3x32x32",)),
        a("data_dependent_keep", "pattern", _pattern("make_keep_above_threshold"), ("boxes=1x16x4",)),
        a("lstm_kws", "pattern", _pattern("make_lstm_kws"), ("x=1x20x6",)),
        a("unet", "pattern", _pattern("make_unet"), ("x=1x3x32x32",)),
    ]


def _pattern(factory: str) -> Callable[[], Any]:
    def make():
        from . import patterns

        return getattr(patterns, factory)()

    return make


ARCHS = {arch.name: arch for arch in _architectures()}


def __getattr__(name: str) -> Any:
    """`edgepack.benchmarks.coverage:zoo_<arch>` is the factory edgepack's model reference resolves."""
    if name.startswith("zoo_") and name[4:] in ARCHS:
        return ARCHS[name[4:]].make
    raise AttributeError(name)


# One architecture, in its own process ----------------------------------------------------------------


def _fast_target(name: str, folder: Path) -> Path:
    """The built-in target file with its formats untouched and a short timing protocol."""
    text = _target_text(name)
    text = re.sub(
        r"\[bench\][^\[]*",
        "[bench]\nthreads = 1\nwarmup = 1\nmin_runs = 3\nmax_runs = 3\nmin_seconds = 0.0\nfootprint = false\n\n",
        text,
        count=1,
    )
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _target_text(name: str) -> str:
    from importlib import resources

    candidates = [Path(__file__).resolve().parents[2] / "targets" / f"{name}.toml"]
    try:
        candidates.append(Path(str(resources.files("edgepack") / "targets" / f"{name}.toml")))
    except Exception:
        pass
    for path in candidates:
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise FileNotFoundError(f"target {name}")


COLUMNS = _columns()


def run_one(name: str, folder: Path) -> dict:
    """Build one architecture for every target; a row of cells {status, reason} by column."""
    from ..errors import EdgepackError
    from ..inputs import parse_input_spec
    from ..pipeline import BuildRequest, build

    arch = ARCHS[name]
    row: dict[str, Any] = {"name": name, "family": arch.family, "inputs": list(arch.inputs), "cells": {}, "notes": []}
    started = time.perf_counter()
    targets = [str(_fast_target(t, folder)) for t in TARGETS]
    try:
        reports = build(
            BuildRequest(
                targets=targets,
                model=f"edgepack.benchmarks.coverage:zoo_{name}",
                inputs=[parse_input_spec(s) for s in arch.inputs],
                out_dir=folder / "dist",
                name=name.replace("_", "-"),
                check_budgets=False,
            )
        )
    except EdgepackError as exc:
        reason = _one_line(exc.message) + (f" -- hint: {_one_line(exc.hint)}" if exc.hint else "")
        status = "refused" if exc.exit_code == 2 else "failed"
        row["cells"] = {column: {"status": status, "reason": reason} for column in COLUMNS}
        row["seconds"] = round(time.perf_counter() - started, 1)
        return row
    for report in reports:
        for artifact in report.artifacts:
            column = f"{report.target}/{artifact.format}"
            status, reason = str(artifact.smoke.status), _one_line(artifact.smoke.reason)
            if status == "passed" or (status == "skipped" and artifact.path):
                fresh = _fresh_check(arch, Path(report.bundle_dir), artifact)
                if fresh is not None:
                    status, reason = ("failed", f"fresh input: {fresh}") if fresh else (status, reason)
            cell = {"status": status, "reason": reason, "capture": artifact.capture_consumed}
            exporter = next((n for n in artifact.notes if n.startswith(("exporter:", "converted "))), "")
            if exporter:
                cell["via"] = _one_line(exporter)[:160]
            row["cells"][column] = cell
    row["capture"] = reports[0].capture.get("strategy") if reports else None
    row["caches"] = [c["attribute"] for c in (reports[0].capture.get("caches") or [])] if reports else []
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def _fresh_check(arch: Arch, bundle: Path, artifact: Any) -> str | None:
    """'' when the artifact matches eager on a fresh input at its manifest tolerance, the reason when not,
    None when its runtime cannot run here (Core ML off macOS uses the reference executor through `open`)."""
    import numpy as np
    import torch

    from ..capture.flatten import flatten_model
    from ..compare import compare_outputs
    from ..formats import FORMATS, RuntimeUnavailable
    from ..inputs import parse_input_spec, sample_inputs
    from ..load import LoadedModel

    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    entry = next(a for a in manifest["artifacts"] if a["format"] == artifact.format)
    tolerance = entry["tolerance"]
    specs = [parse_input_spec(s) for s in arch.inputs]
    module = arch.make()
    sample = sample_inputs(specs, module, FRESH_SEED)
    flat, names = flatten_model(LoadedModel(arch.name, module, specs, {"kind": "python"}), sample)
    with torch.no_grad():
        expected = [t.detach().numpy() for t in flat(*(sample[s.name] for s in specs))]
    try:
        run = FORMATS[artifact.format].open(bundle / entry["path"], 1)
        got = run([sample[s.name].numpy() for s in specs])
    except RuntimeUnavailable:
        return None
    except Exception as exc:
        return f"running failed: {_one_line(str(exc))[:200]}"
    verdict = compare_outputs(
        [np.asarray(g) for g in got],
        expected,
        tolerance["atol"],
        tolerance["rtol"],
        tolerance["min_cosine"],
        "fresh input",
        names,
    )
    return "" if verdict.ok else verdict.reason


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = " ".join(lines[:2]) if lines else ""
    return line if len(line) <= 300 else line[:297] + "..."


# The table -----------------------------------------------------------------------------------------


def totals(rows: list[dict]) -> dict:
    out = {}
    for column in COLUMNS:
        counts: dict[str, int] = {}
        for row in rows:
            status = row["cells"].get(column, {}).get("status", "missing")
            counts[status] = counts.get(status, 0) + 1
        out[column] = counts
    return out


def markdown(rows: list[dict], header: dict) -> str:
    mark = {"passed": "passed", "failed": "**failed**", "skipped": "skipped", "refused": "refused"}
    lines = [
        f"Coverage: {len(rows)} architectures, {header['command']}, {header['cpu']}, torch {header['torch']}, "
        f"transformers {header['transformers']}",
        "",
        "| architecture | family | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [mark.get(row["cells"].get(c, {}).get("status", "-"), "-") for c in COLUMNS]
        lines.append(f"| {row['name']} | {row['family']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| totals | | "
        + " | ".join(", ".join(f"{k} {v}" for k, v in sorted(t.items())) for t in totals(rows).values())
        + " |",
        "",
        "Reasons (one line each):",
        "",
    ]
    for row in rows:
        seen = set()
        for column in COLUMNS:
            cell = row["cells"].get(column)
            if cell and cell["status"] != "passed" and cell["reason"] not in seen:
                seen.add(cell["reason"])
                lines.append(f"- {row['name']} {column} ({cell['status']}): {cell['reason']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgepack.benchmarks.coverage", description=__doc__)
    parser.add_argument("--only", nargs="+", choices=sorted(ARCHS), help="only these architectures")
    parser.add_argument("--jobs", type=int, default=1, help="architectures built at once, one process each")
    parser.add_argument("--out", type=Path, default=Path("coverage"), help="where coverage.md and coverage.json go")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.worker:  # one architecture, in this process: its row as JSON on the last line of stdout
        with scratch_folder(prefix="edgepack-coverage-") as tmp:
            row = run_one(options.worker, Path(tmp))
        print("\n" + json.dumps(row))
        return 0
    names = options.only or list(ARCHS)
    options.out.mkdir(parents=True, exist_ok=True)

    def one(name: str) -> dict:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "edgepack.benchmarks.coverage", "--worker", name],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        try:
            row = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            reason = _one_line(
                (done.stderr or done.stdout).strip().splitlines()[-1]
                if (done.stderr or done.stdout).strip()
                else f"exit {done.returncode}"
            )
            row = {
                "name": name,
                "family": ARCHS[name].family,
                "inputs": list(ARCHS[name].inputs),
                "cells": {c: {"status": "failed", "reason": f"crashed: {reason}"} for c in COLUMNS},
            }
        row["seconds"] = round(time.perf_counter() - started, 1)
        print(
            f"{name}: "
            + ", ".join(f"{c} {row['cells'].get(c, {}).get('status', '-')}" for c in COLUMNS)
            + f" ({row['seconds']} s)",
            flush=True,
        )
        return row

    with ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
        rows = list(pool.map(one, names))
    import torch

    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:
        tf_version = "not installed"
    header = {
        "command": "python -m edgepack.benchmarks.coverage " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu": host_cpu(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": tf_version,
    }
    text = markdown(rows, header)
    (options.out / "coverage.md").write_text(text, encoding="utf-8")
    (options.out / "coverage.json").write_text(
        json.dumps({**header, "rows": rows, "totals": totals(rows)}, indent=1), encoding="utf-8"
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
