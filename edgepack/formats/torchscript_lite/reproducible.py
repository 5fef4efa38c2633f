"""Byte-stable .ptl files: torch writes each code/*.debug_pkl record with the Python call stack at trace
time (the caller's file paths and line numbers: the CLI, pytest, the venv's location), so the same model
traced from another entry point or checkout gives other bytes. The archive is rewritten with torch's own
writer without those records (the lite interpreter never reads them; torch.jit.load then reports errors
without Python source ranges). Zip entry dates are fixed by torch and serialization_id is derived from the
content.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def stabilize_ptl(path: Path) -> list[str]:
    """Drop the debug records in place; return a note saying how many."""
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
    return [
        f"reproducible: removed {len(dropped)} TorchScript debug record(s) holding the trace-time Python call stack"
    ]
