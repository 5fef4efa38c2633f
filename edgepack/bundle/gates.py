"""`edgepack compare --fail-on size=+5%,p50=+10%,accuracy=-0.5pt`: the limits a CI job gates a model change on.

Each rule is METRIC=SIGN NUMBER UNIT, read strictly (a typo must not turn a gate off):
  size=+5%         an artifact grew by more than 5 %
  p50=+10%, p90=+2ms   the median (or 90th percentile) latency rose by more than 10 % (or 2 ms), beyond the
                   timings' own run-to-run spread (see edgepack.bundle.diff)
  accuracy=-0.5pt  top-1 agreement with eager fp32 fell by more than 0.5 percentage points
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError, did_you_mean

# metric -> (the sign a regression has, the units it may be given in)
METRICS = {"size": ("+", ("%",)), "p50": ("+", ("%", "ms")), "p90": ("+", ("%", "ms")), "accuracy": ("-", ("pt",))}
_RULE = re.compile(r"^(?P<metric>[a-z0-9_]+)=(?P<sign>[+-]?)(?P<number>\d+(?:\.\d+)?)(?P<unit>[a-z%]*)$")
EXAMPLE = "size=+5%,p50=+10%,accuracy=-0.5pt"


@dataclass(frozen=True)
class Gate:
    metric: str  # size, p50, p90, accuracy
    limit: float  # in `unit`, positive: how far the metric may move in the regressing direction
    unit: str  # "%" (relative), "ms", or "pt" (percentage points)

    def __str__(self) -> str:
        return f"{self.metric}={METRICS[self.metric][0]}{self.limit:g}{self.unit}"


def parse_gates(text: str) -> list[Gate]:
    """The rules of a --fail-on value; UsageError naming the rule that cannot be read and how to write it."""
    rules = [part.strip() for part in text.split(",")]
    if not text.strip() or not all(rules):
        raise UsageError(f"--fail-on '{text}' has an empty rule.", f"Write comma-separated rules, e.g. {EXAMPLE}.")
    gates = [_parse_rule(rule) for rule in rules]
    metrics = [g.metric for g in gates]
    twice = sorted({m for m in metrics if metrics.count(m) > 1})
    if twice:
        raise UsageError(f"--fail-on gives {', '.join(twice)} twice.", "Give each metric one limit.")
    return gates


def _parse_rule(rule: str) -> Gate:
    match = _RULE.match(rule)
    if not match:
        raise UsageError(
            f"--fail-on rule '{rule}' cannot be read.",
            f"Write METRIC=SIGN NUMBER UNIT with metrics {', '.join(METRICS)}, e.g. {EXAMPLE}.",
        )
    metric, sign, unit = match["metric"], match["sign"], match["unit"]
    if metric not in METRICS:
        raise UsageError(
            f"--fail-on rule '{rule}': unknown metric '{metric}'.{did_you_mean(metric, list(METRICS))}",
            f"The metrics: {', '.join(METRICS)}.",
        )
    direction, units = METRICS[metric]
    worse = "an increase" if direction == "+" else "a drop"
    if sign != direction:
        raise UsageError(
            f"--fail-on rule '{rule}': {metric} regresses by {worse}; write the sign '{direction}' "
            f"({metric}={direction}{match['number']}{unit or units[0]}).",
            f"e.g. {EXAMPLE}",
        )
    if unit not in units:
        raise UsageError(
            f"--fail-on rule '{rule}': {metric} takes the unit{'s' if len(units) > 1 else ''} "
            f"{' or '.join(units)}, not '{unit or '(none)'}'.",
            f"e.g. {EXAMPLE}",
        )
    return Gate(metric, float(match["number"]), unit)
