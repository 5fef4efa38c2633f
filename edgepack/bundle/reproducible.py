"""Make emitted artifacts byte-for-byte reproducible where the converters are not.

Measured on the demo model (two builds, same SOURCE_DATE_EPOCH):
- .ptl: NOT stable as written by torch: each code/*.debug_pkl record holds the Python call stack
  at trace time (the caller's file paths and line numbers: the CLI, pytest, the venv's location),
  so the same model traced from another entry point or checkout gives other bytes. `stabilize`
  rewrites the archive with torch's own writer without those records (the lite interpreter
  never reads them; torch.jit.load then reports errors without Python source ranges). Zip entry
  dates are fixed by torch and serialization_id is derived from the content.
- .onnx and .ort: stable.
- golden/*.npz: stable (numpy writes the zip format's fixed 1980 date).
- .mlpackage: NOT stable as written by coremltools: Manifest.json names its items with random
  UUIDs, model.mlmodel's metadata map is serialized in hash order (varies with PYTHONHASHSEED),
  and its `conversion_date` is today's date. `stabilize` fixes all three, before the artifact is
  hashed and smoke-tested.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
import uuid
from pathlib import Path

from .. import jsonio
from .manifest import source_date_epoch

# Namespace for the Core ML package item identifiers (any fixed UUID would do).
_MLPACKAGE_NAMESPACE = uuid.UUID("6f1c0f5e-3a43-4c1e-9a49-5d1d2e0f7a11")
_CONVERSION_DATE = "com.github.apple.coremltools.conversion_date"


def stabilize(path: Path) -> list[str]:
    """Rewrite the nondeterministic parts of an artifact in place; return notes saying what changed."""
    if path.suffix == ".mlpackage" and path.is_dir():
        return _stabilize_mlpackage(path)
    if path.suffix == ".ptl" and path.is_file():
        return _stabilize_ptl(path)
    return []


def _stabilize_ptl(path: Path) -> list[str]:
    import torch

    reader = torch._C.PyTorchFileReader(str(path))
    records = reader.get_all_records()
    dropped = [r for r in records if r.endswith(".debug_pkl")]
    if not dropped:
        return []
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        stripped = Path(tmp) / path.name  # same stem: torch names the archive's top folder after it
        writer = torch._C.PyTorchFileWriter(str(stripped))
        for name in records:
            if name in dropped or name.startswith(".data/"):  # .data/ is rewritten by write_end_of_file
                continue
            data = reader.get_record(name)
            writer.write_record(name, data, len(data))
        writer.write_end_of_file()
        del writer, reader
        os.replace(stripped, path)
    return [f"reproducible: removed {len(dropped)} TorchScript debug record(s) holding the trace-time Python call stack"]


def _stabilize_mlpackage(package: Path) -> list[str]:
    notes = []
    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    renamed = {old: str(uuid.uuid5(_MLPACKAGE_NAMESPACE, entry["path"])) for old, entry in manifest["itemInfoEntries"].items()}
    manifest["itemInfoEntries"] = {renamed[old]: entry for old, entry in manifest["itemInfoEntries"].items()}
    manifest["rootModelIdentifier"] = renamed.get(manifest["rootModelIdentifier"], manifest["rootModelIdentifier"])
    # Byte-for-byte how coremltools' libmodelpackage writes it: it rewrites the file whenever it opens
    # the package (the smoke test does), and any other formatting would change the artifact's hash.
    jsonio.write(manifest_path, manifest, indent=4, sort_keys=True)
    notes.append("reproducible: package item identifiers derived from their paths (coremltools writes random UUIDs)")
    for spec_path in (package / "Data").rglob("*.mlmodel"):
        notes += _stabilize_spec(spec_path)
    return notes


def _stabilize_spec(spec_path: Path) -> list[str]:
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    notes = []
    metadata = spec.description.metadata.userDefined
    epoch = source_date_epoch()
    if epoch is not None and _CONVERSION_DATE in metadata:
        metadata[_CONVERSION_DATE] = _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%d")
        notes.append("reproducible: conversion_date set from SOURCE_DATE_EPOCH")
    # Deterministic serialization orders the metadata map by key (hash order otherwise).
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))
    return notes
