"""Byte-stable .ptl files: torch writes each code/*.debug_pkl record with the Python call stack at trace
time (the caller's file paths and line numbers: the CLI, pytest, the venv's location), so the same model
traced from another entry point or checkout gives other bytes. The archive is rewritten with torch's own
writer without those records (the lite interpreter never reads them; torch.jit.load then reports errors
without Python source ranges). Zip entry dates are fixed by torch and serialization_id is derived from the
content.
"""

from __future__ import annotations

import os
import pickletools
import re
import struct
from collections.abc import Callable
from pathlib import Path

from ...paths import scratch_folder


def stabilize_ptl(path: Path) -> list[str]:
    """Drop the debug records and renumber TorchScript's per-process class names, in place; return notes."""
    import torch

    reader = torch._C.PyTorchFileReader(str(path))
    records = reader.get_all_records()
    dropped = [r for r in records if r.endswith(".debug_pkl")]
    kept = [r for r in records if r not in dropped and not r.startswith(".data/")]  # .data/: write_end_of_file
    contents = {name: reader.get_record(name) for name in kept}
    renames = _mangle_renames(contents)
    try:
        contents = {name: _renamed(name, data, renames) for name, data in contents.items()}
    except ValueError:  # a pickle laid out otherwise than torch writes it today: keep its names as they are
        renames = {}
    if not dropped and all(old == new for old, new in renames.items()):
        return []
    with scratch_folder(parent=path.parent) as tmp:
        stripped = Path(tmp) / path.name  # same stem: torch names the archive's top folder after it
        writer = torch._C.PyTorchFileWriter(str(stripped))
        for name in kept:
            data = contents[name]
            writer.write_record(_MANGLE.sub(lambda m: renames.get(m.group(0), m.group(0)), name), data, len(data))
        writer.write_end_of_file()
        del writer, reader
        os.replace(stripped, path)
    notes = []
    if dropped:
        notes.append(
            f"reproducible: removed {len(dropped)} TorchScript debug record(s) holding the trace-time Python call stack"
        )
    if any(old != new for old, new in renames.items()):
        notes.append("reproducible: TorchScript's per-process class numbering (___torch_mangle_N) renumbered from 0")
    return notes


# TorchScript names a class compiled again in one process (the shape guard, in every build after the first)
# `<name>.___torch_mangle_<N>`, N counting over the whole process: the same model built twice in one Python
# session would give two .ptl files. Numbered again in order of first appearance, the names stay distinct
# and no longer depend on what the process compiled before.
_MANGLE = re.compile(r"___torch_mangle_\d+")


def _mangle_renames(contents: dict[str, bytes]) -> dict[str, str]:
    found: list[str] = []
    for name in sorted(contents, key=lambda n: (n != "data.pkl", n != "bytecode.pkl", _MANGLE.sub("", n))):
        for match in _MANGLE.finditer(name + "\0" + contents[name].decode("latin-1")):
            if match.group(0) not in found:
                found.append(match.group(0))
    return {old: f"___torch_mangle_{i}" for i, old in enumerate(found)}


def _renamed(name: str, data: bytes, renames: dict[str, str]) -> bytes:
    if not renames or not _MANGLE.search(data.decode("latin-1")):
        return data
    if name.endswith(".pkl"):
        return _renamed_pickle(data, lambda text: _MANGLE.sub(lambda m: renames[m.group(0)], text))
    return _MANGLE.sub(lambda m: renames[m.group(0)], data.decode("utf-8")).encode("utf-8")


def _renamed_pickle(data: bytes, rename: Callable[[str], str]) -> bytes:
    """The pickle with its class-name strings renamed: a string's opcode is written again with its new length
    (BINUNICODE's 4-byte length, GLOBAL's newline-terminated text); every other opcode is copied as it was."""
    ops = list(pickletools.genops(data))
    out = bytearray()
    for index, (op, arg, pos) in enumerate(ops):
        end = ops[index + 1][2] if index + 1 < len(ops) else len(data)
        raw = data[pos:end]
        if isinstance(arg, str) and _MANGLE.search(arg):
            text = rename(arg)
            if op.name == "GLOBAL":
                module, _, attr = text.partition(" ")
                raw = op.code.encode("latin-1") + f"{module}\n{attr}\n".encode()
            elif op.name == "BINUNICODE":
                encoded = text.encode("utf-8")
                raw = op.code.encode("latin-1") + struct.pack("<I", len(encoded)) + encoded
            elif op.name == "SHORT_BINUNICODE" and len(text.encode("utf-8")) < 256:
                encoded = text.encode("utf-8")
                raw = op.code.encode("latin-1") + bytes([len(encoded)]) + encoded
            else:  # an opcode torch does not write for names: leave the file as it is rather than guess
                raise ValueError(f"unexpected pickle opcode {op.name} holding a TorchScript class name")
        out += raw
    return bytes(out)
