"""Byte-stable .mlpackage folders: coremltools names the items of Manifest.json with random UUIDs,
serializes model.mlmodel's metadata map in hash order (varies with PYTHONHASHSEED) and records today's
date as `conversion_date`. All three are fixed here, before the artifact is hashed and smoke-tested.
"""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from pathlib import Path

from ... import jsonio
from ...bundle.files import source_date_epoch

# Namespace for the Core ML package item identifiers (any fixed UUID would do).
_MLPACKAGE_NAMESPACE = uuid.UUID("6f1c0f5e-3a43-4c1e-9a49-5d1d2e0f7a11")
_CONVERSION_DATE = "com.github.apple.coremltools.conversion_date"


def stabilize_mlpackage(package: Path) -> list[str]:
    """Derive the item ids from their paths, fix the date and the metadata order, in place; return notes."""
    notes = []
    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    renamed = {
        old: str(uuid.uuid5(_MLPACKAGE_NAMESPACE, entry["path"])) for old, entry in manifest["itemInfoEntries"].items()
    }
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
        metadata[_CONVERSION_DATE] = _dt.datetime.fromtimestamp(epoch, _dt.UTC).strftime("%Y-%m-%d")
        notes.append("reproducible: conversion_date set from SOURCE_DATE_EPOCH")
    # Deterministic serialization orders the metadata map by key (hash order otherwise).
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))
    return notes
