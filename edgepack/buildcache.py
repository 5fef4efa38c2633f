"""Work shared between the targets of one build: an artifact converted with the same settings from the
same capture is the same bytes, so it is converted once and copied; a fresh-process footprint probe of
the same bytes on the same thread count is run once, and the probes a target will need are started ahead
(edgepack/footprint.py).

Only plain fp32 emits are shared (the precision ladder and `auto` measure every attempt in their own
folder), and a copy is checked against the sha256 of the file it was made from before it is used.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from .bundle.files import sha256_of
from .footprint import Footprint, Probes
from .formats import Emitted
from .targets import FormatSettings, Target


@dataclass
class _Converted:
    path: Path  # kept outside any bundle, so a later target's copy does not depend on an earlier bundle
    sha256: str
    emitted: Emitted  # as `emit` + `stabilize` returned it, before companions were added


@dataclass
class BuildCache:
    workdir: Path
    probes: Probes
    _converted: dict[str, _Converted] = field(default_factory=dict)
    _footprints: dict[tuple[str, str, int], Footprint] = field(default_factory=dict)

    @staticmethod
    def emit_key(settings: FormatSettings) -> str:
        """Everything about a target's format table that reaches `emit`: its name, precision and options."""
        return json.dumps([settings.name, settings.precision, settings.options], sort_keys=True, default=repr)

    def converted(self, settings: FormatSettings, path: Path) -> Emitted | None:
        """A copy at `path` of the artifact an earlier target converted with these settings, or None."""
        entry = self._converted.get(self.emit_key(settings))
        if entry is None or sha256_of(entry.path) != entry.sha256:
            return None
        _copy(entry.path, path)
        return replace(copy.deepcopy(entry.emitted), path=path)

    def remember(self, settings: FormatSettings, emitted: Emitted) -> None:
        key = self.emit_key(settings)
        kept = self.workdir / f"converted-{len(self._converted)}" / emitted.path.name
        kept.parent.mkdir(parents=True)
        _copy(emitted.path, kept)
        self._converted[key] = _Converted(kept, sha256_of(kept), copy.deepcopy(emitted))

    def footprint(self, format_name: str, sha256: str | None, threads: int) -> Footprint | None:
        return self._footprints.get((format_name, sha256, threads)) if sha256 else None

    def start_probes(self, targets: list[Target]) -> None:
        """Start, at the beginning of a build, the probes its targets will need: formats timed on this machine
        whose bytes no earlier target measures (a plain fp32 format table an earlier target shares is converted
        once, so probed once). A wrong guess costs a process started for nothing, or one started late."""
        from .formats import FORMATS

        shared: set[tuple[str, int]] = set()
        for target in targets:
            threads = target.bench.threads
            for settings in target.formats:
                key = (self.emit_key(settings), threads)
                try:  # before the settings are validated: a bad one is the validation's to report
                    timed = target.bench.footprint and FORMATS[settings.name].timed_here(settings)
                except Exception:
                    timed = False
                if timed and key not in shared:
                    self.probes.start(settings.name, threads, owner=target.name)
                if settings.precision == "fp32":
                    shared.add(key)

    def remember_footprint(self, format_name: str, sha256: str | None, threads: int, footprint: Footprint) -> None:
        if sha256:
            self._footprints[(format_name, sha256, threads)] = footprint


def _copy(source: Path, destination: Path) -> None:
    """Files and folder artifacts (.mlpackage) alike, with their modes and times (as a fresh emit's)."""
    if source.is_dir():
        shutil.copytree(source, destination)
    else:
        shutil.copy2(source, destination)
