"""Put a built bundle into one of the demo apps (android-demo/, ios-demo/), where the app reads it.

The app layout is recognised from its files; the bundle must carry the format that app runs
(TorchScript Lite for Android, Core ML for iOS) and its artifacts must match the manifest's
sha256. The copy is staged beside the destination and swapped in with renames, so the app never
sees half a bundle and a failed install leaves the previous copy in place.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import interrupts
from ..datafiles import loads_json
from ..errors import UsageError
from ..paths import bundle_member
from .files import sha256_of
from .manifest import read_manifest
from .staging import locked_folder, remove_abandoned, unlock


@dataclass(frozen=True)
class AppLayout:
    """A demo-app layout: the files that identify it, where its bundle goes, what it must get."""

    platform: str
    markers: tuple[str, ...]  # relative paths that must all exist
    bundle_path: str  # the folder the app reads the bundle from, relative to the app
    build_hint: str
    next_step: str  # what to run in the app folder afterwards


ANDROID = AppLayout(
    "android",
    ("settings.gradle.kts", "app/build.gradle.kts", "app/src/main/AndroidManifest.xml"),
    "app/src/main/assets/edgepack",
    "edgepack build --target android",
    "./gradlew installDebug (and connectedDebugAndroidTest for the golden vectors on a device)",
)
IOS = AppLayout(
    "ios",
    ("project.yml", "EdgepackDemo/EdgepackDemoApp.swift"),
    "EdgepackDemo/Resources/edgepack",
    "edgepack build --target ios",
    "xcodegen generate, then build and run EdgepackDemo in Xcode",
)
LAYOUTS = (ANDROID, IOS)
# Copied besides the artifacts (the signature when there is one); report.* stay in dist/.
BUNDLE_FILES = ("manifest.json", "manifest.sig", "golden")


@dataclass(frozen=True)
class Installed:
    platform: str
    destination: Path
    model: str
    target: str
    files: tuple[str, ...]  # top-level names copied into the destination
    next_step: str


def detect_layout(app_dir: Path) -> AppLayout:
    if not app_dir.is_dir():
        raise UsageError(
            f"App folder '{app_dir}' does not exist.", "Pass the demo app's folder, e.g. android-demo/ or ios-demo/."
        )
    for layout in LAYOUTS:
        if all((app_dir / marker).exists() for marker in layout.markers):
            return layout
    expected = "; ".join(f"{layout.platform}: {', '.join(layout.markers)}" for layout in LAYOUTS)
    raise UsageError(
        f"'{app_dir}' is not one of the demo-app layouts edgepack knows.",
        f"Point at android-demo/ or ios-demo/ (or a copy of them); they are recognised by {expected}.",
    )


def read_bundle_manifest(bundle_dir: Path) -> dict:
    manifest_path = bundle_dir / "manifest.json"
    if not manifest_path.is_file():
        raise UsageError(
            f"'{bundle_dir}' is not a bundle: it has no manifest.json.",
            "Pass a folder edgepack build wrote, e.g. dist/demo-digits/android.",
        )
    manifest = read_manifest(manifest_path)  # schema-checked: what it names is what this copies
    build = manifest.get("build") if isinstance(manifest, dict) else None
    if isinstance(build, dict) and build.get("ok") is False:  # recorded in what ships: report.json can be dropped
        raise UsageError(
            f"The bundle at '{bundle_dir}' is from a failed build: {'; '.join(build.get('problems', []))}.",
            "Fix those problems and rebuild; only passing bundles go into apps.",
        )
    report_path = bundle_dir / "report.json"
    if report_path.is_file() and _report_says_failed(report_path):
        raise UsageError(
            f"The bundle at '{bundle_dir}' failed its checks (report.json says ok: false).",
            "Fix the problems listed in its report.md and rebuild; only passing bundles go into apps.",
        )
    return manifest


def _report_says_failed(report_path: Path) -> bool:
    try:
        report = loads_json(report_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False  # informational only; the manifest's own `build` record is the one that counts
    return isinstance(report, dict) and report.get("ok") is False


def check_bundle_fits(manifest: dict, layout: AppLayout, bundle_dir: Path) -> None:
    """The bundle must carry the app's format, and every artifact must be the one the manifest hashed."""
    formats = [a["format"] for a in manifest.get("artifacts", [])]
    target = manifest.get("target", {}).get("name", "?")
    required = required_formats(layout)
    if not set(required) <= set(formats):
        raise UsageError(
            f"The bundle was built for target '{target}' ({', '.join(formats) or 'no artifacts'}); "
            f"the {layout.platform} demo app runs {', '.join(required)}.",
            f"Build a bundle for it with `{layout.build_hint}` and install that one.",
        )
    for artifact in manifest["artifacts"]:
        path = bundle_member(bundle_dir, artifact.get("path") if isinstance(artifact, dict) else None, "artifact")
        if not path.exists():
            raise UsageError(
                f"The bundle lacks {artifact['path']}, which its manifest lists.",
                "Rebuild the bundle with edgepack build.",
            )
        if sha256_of(path) != artifact["sha256"]:
            raise UsageError(
                f"{path} does not match the sha256 in the bundle's manifest: it changed after the build.",
                "Rebuild the bundle with edgepack build rather than editing it.",
            )


def required_formats(layout: AppLayout) -> list[str]:
    """The formats the app cannot run without: each format names the demo apps it serves."""
    from ..formats import FORMATS

    return [name for name, fmt in FORMATS.items() if layout.platform in fmt.app_platforms]


def install_bundle(app_dir: Path, bundle_dir: Path) -> Installed:
    """Copy the bundle's artifacts, manifest.json and golden/ to where the app reads them."""
    layout = detect_layout(app_dir)
    manifest = read_bundle_manifest(bundle_dir)
    check_bundle_fits(manifest, layout, bundle_dir)
    names = (
        [a["path"] for a in manifest["artifacts"]]
        + _companion_paths(manifest)
        + [n for n in BUNDLE_FILES if (bundle_dir / n).exists()]
    )
    destination = app_dir / layout.bundle_path
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Hidden staging folder beside the destination: same filesystem for the renames, and
    # ignored by the Android asset packager and by the iOS folder reference if left by a crash.
    remove_abandoned(destination.parent)  # left by an install that was killed
    staging, lock = locked_folder(destination.parent, ".edgepack.staging-")
    try:
        for name in names:  # each already proven a plain relative path inside the bundle; and so inside staging
            _copy(bundle_member(bundle_dir, name), staging / name)
        with interrupts.deferred():
            _swap_into_place(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        unlock(lock)
    return Installed(
        layout.platform,
        destination,
        manifest["model"]["name"],
        manifest["target"]["name"],
        tuple(names),
        layout.next_step,
    )


def _companion_paths(manifest: dict) -> list[str]:
    """Files each format ships beside its artifact for its runtime (a bundled program for the app's self-test)."""
    from ..formats import FORMATS

    return [
        companion.path
        for artifact in manifest["artifacts"]
        if artifact["format"] in FORMATS
        for companion in FORMATS[artifact["format"]].companions(artifact["requirements"])
    ]


def _copy(source: Path, destination: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, destination)
    else:
        shutil.copy2(source, destination)


def _swap_into_place(staging: Path, destination: Path) -> None:
    staging.chmod(0o755)  # mkdtemp makes it private; the build tools must read it like any folder
    if not destination.exists():
        staging.rename(destination)
        return
    retired, lock = locked_folder(destination.parent, ".edgepack.old-")
    try:
        destination.rename(retired / "bundle")
        staging.rename(destination)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        unlock(lock)
