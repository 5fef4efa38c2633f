"""Charts as inline SVG, drawn in plain Python at build time: no charting library to install or vendor, no
script in the page, and the same figures give the same bytes. Two chart kinds cover the report: horizontal
box plots (latency distributions) and horizontal bars (sizes, accuracy, per-layer sensitivity).

Every label is escaped here; callers pass raw text."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

WIDTH = 760
LABEL_WIDTH = 230  # the text column left of the plot area
NOTE_WIDTH = 150  # the text column right of the plot area (bar notes)
ROW = 28
TOP = 30  # room for the title
BOTTOM = 34  # room for the axis ticks and unit


@dataclass(frozen=True)
class Box:
    """One latency distribution. Without the quartiles (an older report, or a baseline timed apart) only the
    median and the tail percentiles are drawn."""

    label: str
    p50: float
    p90: float | None = None
    p99: float | None = None
    low: float | None = None
    p25: float | None = None
    p75: float | None = None
    high: float | None = None
    kind: str = "artifact"  # CSS class: artifact | eager | baseline


@dataclass(frozen=True)
class Bar:
    label: str
    value: float | None  # None: no figure (the note says why)
    kind: str = "plain"  # CSS class: plain | shipped | passed | failed | baseline
    note: str = ""


def box_plot(boxes: list[Box], unit: str, title: str, name: str) -> str:
    """Boxes from p25 to p75, the median as a bar, whiskers from the fastest to the slowest run, p90 and p99
    as ticks on the whisker. The axis turns logarithmic (and says so) when the values span over a decade."""
    values = [v for b in boxes for v in (b.low, b.p50, b.p90, b.p99, b.high) if v is not None and v > 0]
    low, high = min(values, default=1.0), max(values, default=1.0)
    log = high > 10 * low
    scale = _Scale(low if log else 0.0, high, LABEL_WIDTH, WIDTH - 20, log)
    height = TOP + ROW * len(boxes) + BOTTOM
    parts = [_open(name, title, height), *_axis(scale, height, f"{unit}, log scale" if log else unit)]
    for row, box in enumerate(boxes):
        y = TOP + ROW * row + ROW / 2
        parts.append(_label(box.label, y))
        parts.append(f'<g class="box {escape(box.kind)}" data-label="{escape(box.label)}" data-p50="{_num(box.p50)}">')
        parts += _box_marks(box, scale, y)
        parts.append(f"<title>{escape(_box_tooltip(box, unit))}</title></g>")
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(bars: list[Bar], unit: str, title: str, name: str) -> str:
    """Horizontal bars from zero, each with its value (or its note) written at the end."""
    values = [b.value for b in bars if b.value is not None]
    low, high = min([0.0, *values]), max([0.0, *values])
    scale = _Scale(low, high if high > low else low + 1.0, LABEL_WIDTH, WIDTH - NOTE_WIDTH)
    height = TOP + ROW * len(bars) + BOTTOM
    parts = [_open(name, title, height), *_axis(scale, height, unit)]
    for row, bar in enumerate(bars):
        y = TOP + ROW * row
        parts.append(_label(bar.label, y + ROW / 2))
        text = bar.note or ("" if bar.value is None else f"{_short(bar.value)} {unit}")
        if bar.value is not None:
            x0, x1 = sorted((scale.x(0.0), scale.x(bar.value)))
            parts.append(
                f'<rect class="bar {escape(bar.kind)}" x="{x0:.1f}" y="{y + 5:.1f}" width="{max(x1 - x0, 1.0):.1f}" '
                f'height="{ROW - 10}" data-label="{escape(bar.label)}" data-value="{_num(bar.value)}">'
                f"<title>{escape(bar.label)}: {escape(text)}</title></rect>"
            )
        parts.append(f'<text class="note" x="{WIDTH - NOTE_WIDTH + 6}" y="{y + ROW / 2 + 4:.1f}">{escape(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


class _Scale:
    """From [low, high] (widened to round ticks) onto [left, right] pixels: linear, or logarithmic when the
    values span more than a decade (a 0.1 ms runtime beside a 5 ms tail stays readable)."""

    def __init__(self, low: float, high: float, left: float, right: float, log: bool = False) -> None:
        self.left, self.right, self.log = left, right, log
        if log:
            self.low, self.high = 10 ** math.floor(math.log10(low)), 10 ** math.ceil(math.log10(high))
            return
        self.step = _nice_step((high - low) / 5 if high > low else 1.0)
        self.low = math.floor(low / self.step) * self.step
        self.high = math.ceil(high / self.step) * self.step or self.step

    def x(self, value: float) -> float:
        if self.log:
            share = math.log10(max(value, self.low) / self.low) / math.log10(self.high / self.low)
        else:
            share = (value - self.low) / (self.high - self.low)
        return self.left + share * (self.right - self.left)

    def ticks(self) -> list[float]:
        if self.log:
            decades = range(round(math.log10(self.low)), round(math.log10(self.high)))
            return [m * 10.0**d for d in decades for m in (1, 2, 5)] + [self.high]
        count = round((self.high - self.low) / self.step)
        return [self.low + i * self.step for i in range(count + 1)]


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, the smallest not below `raw`."""
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _open(name: str, title: str, height: float) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="{escape(name)}" role="img" '
        f'aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {height:.0f}" width="{WIDTH}" height="{height:.0f}">'
        f'<text class="title" x="0" y="16">{escape(title)}</text>'
    )


def _axis(scale: _Scale, height: float, unit: str) -> list[str]:
    bottom = height - BOTTOM
    parts = []
    for tick in scale.ticks():
        x = scale.x(tick)
        parts.append(f'<line class="grid" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{bottom:.1f}"/>')
        parts.append(f'<text class="tick" x="{x:.1f}" y="{bottom + 14:.1f}">{tick:g}</text>')
    parts.append(f'<text class="unit" x="{scale.right:.1f}" y="{bottom + 28:.1f}">{escape(unit)}</text>')
    return parts


def _label(text: str, y: float) -> str:
    shown = text if len(text) <= 34 else text[:33] + "…"
    return f'<text class="label" x="{LABEL_WIDTH - 8}" y="{y + 4:.1f}">{escape(shown)}</text>'


def _box_marks(box: Box, scale: _Scale, y: float) -> list[str]:
    marks = []
    far = box.high if box.high is not None else box.p99 if box.p99 is not None else box.p90
    near = box.low if box.low is not None else box.p50
    if far is not None:
        marks.append(
            f'<line class="whisker" x1="{scale.x(near):.1f}" y1="{y:.1f}" x2="{scale.x(far):.1f}" y2="{y:.1f}"/>'
        )
    if box.p25 is not None and box.p75 is not None:
        x0, x1 = scale.x(box.p25), scale.x(box.p75)
        marks.append(f'<rect class="iqr" x="{x0:.1f}" y="{y - 8:.1f}" width="{max(x1 - x0, 1.0):.1f}" height="16"/>')
    for value, css, half in ((box.p90, "p90", 5), (box.p99, "p99", 5), (box.p50, "median", 9)):
        if value is not None:
            x = scale.x(value)
            marks.append(f'<line class="{css}" x1="{x:.1f}" y1="{y - half:.1f}" x2="{x:.1f}" y2="{y + half:.1f}"/>')
    return marks


def _box_tooltip(box: Box, unit: str) -> str:
    named: list[tuple[str, float | None]] = [("min", box.low), ("p25", box.p25), ("p50", box.p50), ("p75", box.p75)]
    named += [("p90", box.p90), ("p99", box.p99), ("max", box.high)]
    return f"{box.label}: " + ", ".join(f"{k} {_short(v)} {unit}" for k, v in named if v is not None)


def _short(value: float) -> str:
    """Three significant digits, no exponent for the magnitudes a report shows."""
    if value == 0:
        return "0"
    digits = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{digits}f}"


def _num(value: float) -> str:
    return repr(float(value))
