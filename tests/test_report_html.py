"""report.html: in every bundle, self-contained, its charts drawn from report.json's figures, rendered by a
real headless Chromium with no network, and hostile strings kept as text."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from edgepack.bundle.verify import verify_bundle
from edgepack.report_html import render_html

from .browser import load_offline, require_chromium

HOSTILE = '<img src=x onerror="document.title=1">"</script><script>alert(1)</script>'
_BOX = re.compile(r'<g class="box [^"]*" data-label="([^"]*)" data-p50="([^"]*)"')
_BAR = re.compile(r'<rect class="bar [^"]*" [^>]*data-label="([^"]*)" data-value="([^"]*)"')


def _documents(bundle: Path) -> tuple[dict, dict]:
    return json.loads((bundle / "report.json").read_text()), json.loads((bundle / "manifest.json").read_text())


def _charts(page: str) -> dict[str, str]:
    return {m.group(1): m.group(0) for m in re.finditer(r'<svg [^>]*data-chart="([^"]*)".*?</svg>', page)}


@pytest.mark.parametrize("target", ["ios", "android", "iot"])
def test_every_bundle_has_a_self_contained_report_html_with_its_latencies(demo_reports, target):
    bundle = Path(demo_reports[target].bundle_dir)
    page = (bundle / "report.html").read_text()
    report, _ = _documents(bundle)
    # Nothing fetched, nothing run: no script, no stylesheet or image links, no URL but SVG's namespace.
    assert not re.search(r"<script|<link|<img|<iframe|\ssrc=|\shref=|url\(|@import", page)
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) <= {"http://www.w3.org/2000/svg"}
    expected = [("eager PyTorch (fp32)", report["baseline"]["eager_latency_ms"]["p50"])] + [
        (f"{a['format']} {a['precision']}", a["latency_ms"]["p50"]) for a in report["artifacts"] if a["latency_ms"]
    ]
    latency = _charts(page)["latency"]
    assert [(label, float(p50)) for label, p50 in _BOX.findall(latency)] == expected
    assert latency.count('<rect class="iqr"') == len(expected)  # quartiles recorded from every timed run
    for a in report["artifacts"]:  # every artifact is in the summary, and the untimed ones say why
        assert f"<td>{a['format']}</td>" in page
        assert not a["latency_reason"] or html.escape(a["latency_reason"]) in page
    assert verify_bundle(bundle).ok  # report.html is one of the files the manifest leaves out by design


def test_the_precision_ladder_and_sensitivity_are_charted_from_the_report(ladder_bundle):
    report_object, _ = ladder_bundle
    bundle = Path(report_object.bundle_dir)
    report, _ = _documents(bundle)
    charts = _charts((bundle / "report.html").read_text())
    (artifact,) = report["artifacts"]
    quantization = artifact["quantization"]
    assert len(quantization["attempts"]) >= 2 and quantization["sensitivity"]  # the ladder really ran
    # The fp32 version is a bar of its own when a quantized rung shipped; else it is the ladder's last rung.
    baseline = [artifact["size_before_bytes"]] if artifact["size_before_bytes"] else []
    sizes = [float(value) * 1024 for _, value in _BAR.findall(charts["size"])]
    assert sizes == pytest.approx(baseline + [t["size_bytes"] for t in quantization["attempts"]])
    measured = [t["accuracy"]["sqnr_db"] for t in quantization["attempts"] if t["accuracy"]]
    assert [float(v) for _, v in _BAR.findall(charts["accuracy"])] == pytest.approx(measured)
    layers = [(e["layer"], e["sqnr_db"]) for e in quantization["sensitivity"] if e["sqnr_db"] is not None]
    assert [(label, float(v)) for label, v in _BAR.findall(charts["sensitivity"])] == [
        (name, pytest.approx(sqnr)) for name, sqnr in layers
    ]
    floats = len(quantization["float_layers"])
    shipped = re.findall(r'<rect class="bar shipped" [^>]*data-label="([^"]*)"', charts["size"])
    assert shipped == [quantization["shipped"] + (f" + {floats} float" if floats else "")]


def test_hostile_strings_stay_text(ladder_bundle):
    """A model name, a hazard's file and message and a layer name holding markup are escaped everywhere."""
    report, manifest = _documents(Path(ladder_bundle[0].bundle_dir))
    report["model"] = HOSTILE
    report["capture"]["hazards"] = [
        {"file": f"/models/{HOSTILE}.py", "line": 7, "kind": HOSTILE, "message": HOSTILE, "fix": HOSTILE}
    ]
    report["artifacts"][0]["quantization"]["sensitivity"][0]["layer"] = HOSTILE
    page = render_html(report, manifest)
    assert "<script" not in page and "<img" not in page and 'onerror="' not in page
    assert page.count("&lt;img src=x onerror=&quot;document.title=1&quot;&gt;") >= 5


def test_the_report_renders_offline_in_chromium_with_its_charts(ladder_bundle, tmp_path):
    require_chromium()
    page = Path(ladder_bundle[0].bundle_dir) / "report.html"
    loaded = load_offline(page, tmp_path / "report.png", tmp_path / "profile")
    print(f"\nscreenshot of {page}: {loaded.screenshot}")
    assert loaded.console == []  # the page runs nothing and fetches nothing: not even a warning
    assert loaded.active_elements == 0 and loaded.handler_attributes == 0
    drawn = {c["name"]: c for c in loaded.charts}
    assert set(drawn) == {"latency", "size", "accuracy", "sensitivity"}
    assert all(c["marks"] > 0 and c["width"] > 300 for c in loaded.charts)
    assert "eager PyTorch (fp32)" in drawn["latency"]["labels"]
    for section in ("Summary", "Latency against eager", "Size and accuracy by precision", "Capture", "Provenance"):
        assert section in loaded.text
    assert loaded.screenshot.stat().st_size > 20_000  # a blank page is a few KB


def test_hostile_strings_stay_text_in_chromium(ladder_bundle, tmp_path):
    require_chromium()
    report, manifest = _documents(Path(ladder_bundle[0].bundle_dir))
    report["model"] = HOSTILE
    report["artifacts"][0]["quantization"]["sensitivity"][0]["layer"] = HOSTILE
    page = tmp_path / "hostile.html"
    page.write_text(render_html(report, manifest))
    loaded = load_offline(page, tmp_path / "hostile.png", tmp_path / "profile")
    assert loaded.console == [] and loaded.active_elements == 0 and loaded.handler_attributes == 0
    assert HOSTILE in loaded.text  # shown as the text it is
    assert HOSTILE in next(c for c in loaded.charts if c["name"] == "sensitivity")["labels"]


def test_the_browser_check_sees_scripts_fetches_and_console_errors(tmp_path):
    """The harness can fail: a page that runs a script, logs an error and fetches an image is caught."""
    require_chromium()
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><body><p>x</p><script>console.error('broken chart')</script>"
        '<img src="https://example.invalid/a.png"></body></html>'
    )
    loaded = load_offline(page, tmp_path / "bad.png", tmp_path / "profile")
    assert any("broken chart" in e["message"] for e in loaded.console_errors)
    assert loaded.active_elements == 2 and loaded.charts == []
