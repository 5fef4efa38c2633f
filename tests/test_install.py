"""`edgepack install-into`: real bundles from the demo build go into copies of the real demo-app layouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgepack.bundle import install
from edgepack.bundle.install import ANDROID, IOS, detect_layout, install_bundle
from edgepack.cli import app
from edgepack.errors import UsageError

REPO = Path(__file__).resolve().parent.parent
DEMO_APPS = {"android": (REPO / "android-demo", ANDROID), "ios": (REPO / "ios-demo", IOS)}


def app_copy(tmp_path: Path, platform: str) -> Path:
    """The files that identify the real demo app, copied (not the app's installed bundle, if any)."""
    source, layout = DEMO_APPS[platform]
    target = tmp_path / f"{platform}-demo"
    for marker in layout.markers:
        (target / marker).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / marker, target / marker)
    return target


def bundle_of(demo_reports, target: str) -> Path:
    return Path(demo_reports[target].bundle_dir)


@pytest.mark.parametrize("platform", DEMO_APPS)
def test_the_demo_apps_in_this_repo_are_recognised(platform):
    source, layout = DEMO_APPS[platform]
    assert detect_layout(source) == layout


@pytest.mark.parametrize("platform", DEMO_APPS)
def test_install_copies_artifacts_manifest_and_golden_where_the_app_reads_them(tmp_path, demo_reports, platform):
    app_dir, bundle = app_copy(tmp_path, platform), bundle_of(demo_reports, platform)
    installed = install_bundle(app_dir, bundle)
    destination = app_dir / DEMO_APPS[platform][1].bundle_path
    assert installed.destination == destination and installed.platform == platform
    manifest = json.loads((destination / "manifest.json").read_text())
    assert manifest == json.loads((bundle / "manifest.json").read_text())
    for artifact in manifest["artifacts"]:
        assert (destination / artifact["path"]).exists()
    assert sorted(p.name for p in (destination / "golden").iterdir()) == sorted(
        p.name for p in (bundle / "golden").iterdir()
    )
    assert not (destination / "report.json").exists()  # the build report stays in dist/


def test_reinstall_replaces_the_previous_copy_and_leaves_no_staging(tmp_path, demo_reports):
    app_dir, bundle = app_copy(tmp_path, "android"), bundle_of(demo_reports, "android")
    destination = install_bundle(app_dir, bundle).destination
    (destination / "stale.ptl").write_bytes(b"from an older bundle")
    install_bundle(app_dir, bundle)
    assert not (destination / "stale.ptl").exists()
    assert sorted(p.name for p in destination.parent.iterdir()) == ["edgepack"]


def test_a_failed_copy_keeps_the_previous_install(tmp_path, demo_reports, monkeypatch):
    app_dir, bundle = app_copy(tmp_path, "android"), bundle_of(demo_reports, "android")
    destination = install_bundle(app_dir, bundle).destination
    before = sorted(p.relative_to(destination) for p in destination.rglob("*"))

    def disk_full(source: Path, target: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(install, "_copy", disk_full)
    with pytest.raises(OSError):
        install_bundle(app_dir, bundle)
    assert sorted(p.relative_to(destination) for p in destination.rglob("*")) == before
    assert sorted(p.name for p in destination.parent.iterdir()) == ["edgepack"]


@pytest.mark.parametrize(
    "platform,wrong_target,needed",
    [
        ("android", "ios", "torchscript_lite"),
        ("android", "iot", "torchscript_lite"),
        ("ios", "android", "coreml"),
        ("ios", "iot", "coreml"),
    ],
)
def test_a_bundle_for_another_target_is_refused(tmp_path, demo_reports, platform, wrong_target, needed):
    app_dir = app_copy(tmp_path, platform)
    with pytest.raises(UsageError) as caught:
        install_bundle(app_dir, bundle_of(demo_reports, wrong_target))
    assert f"built for target '{wrong_target}'" in caught.value.message and needed in caught.value.message
    assert f"--target {platform}" in caught.value.hint
    assert not (app_dir / DEMO_APPS[platform][1].bundle_path).exists()


def test_a_folder_that_is_no_demo_app_is_refused(tmp_path, demo_reports):
    (tmp_path / "settings.gradle.kts").write_text("")  # an Android project, but not the demo's layout
    with pytest.raises(UsageError, match="not one of the demo-app layouts"):
        install_bundle(tmp_path, bundle_of(demo_reports, "android"))


def test_a_folder_that_is_no_bundle_is_refused(tmp_path):
    with pytest.raises(UsageError, match="no manifest.json"):
        install_bundle(app_copy(tmp_path, "android"), tmp_path)


def test_an_artifact_changed_after_the_build_is_refused(tmp_path, demo_reports):
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_of(demo_reports, "android"), bundle)
    with (bundle / "demo-digits.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(UsageError, match="does not match the sha256"):
        install_bundle(app_copy(tmp_path, "android"), bundle)


def test_a_bundle_that_failed_its_checks_is_refused(tmp_path, demo_reports):
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_of(demo_reports, "android"), bundle)
    report = json.loads((bundle / "report.json").read_text())
    (bundle / "report.json").write_text(json.dumps({**report, "ok": False}))
    with pytest.raises(UsageError, match="failed its checks"):
        install_bundle(app_copy(tmp_path, "android"), bundle)


def test_cli_installs_and_exits_2_with_the_reason_on_a_mismatch(tmp_path, demo_reports):
    app_dir = app_copy(tmp_path, "ios")
    runner = CliRunner()
    ok = runner.invoke(app, ["install-into", str(app_dir), "--bundle", str(bundle_of(demo_reports, "ios"))])
    assert ok.exit_code == 0, ok.output
    assert "into the ios app" in ok.output and (app_dir / IOS.bundle_path / "demo-digits.mlpackage").is_dir()
    assert "xcodegen generate" in ok.output
    wrong = runner.invoke(app, ["install-into", str(app_dir), "--bundle", str(bundle_of(demo_reports, "android"))])
    assert wrong.exit_code == 2
    assert "the ios demo app runs coreml" in wrong.output


def test_cli_installs_from_the_archive_and_keeps_the_signature(tmp_path, demo_reports):
    from edgepack.bundle.staging import archive_bundle

    bundle = tmp_path / "android"
    shutil.copytree(bundle_of(demo_reports, "android"), bundle)
    (bundle / "manifest.sig").write_bytes(b"signature bytes")  # install copies it as is; verify checks it
    archive = archive_bundle(bundle)
    app_dir = app_copy(tmp_path, "android")
    done = CliRunner().invoke(app, ["install-into", str(app_dir), "--bundle", str(archive)])
    assert done.exit_code == 0, done.output
    installed = app_dir / ANDROID.bundle_path
    assert (installed / "manifest.sig").read_bytes() == b"signature bytes" and (installed / "demo-digits.ptl").is_file()
