"""Every precision edgepack knows, in one table: the targets, the ladder, the smoke test and the formats
read it, so a scheme added here is validated, ordered in the ladder and smoke-tested at the right
tolerance without touching anything else. A format implements some of these (`Format.precisions`) and
maps the rest to its nearest scheme.

Nothing here imports torch: `edgepack verify` and `inspect` use it too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Precision:
    name: str
    # Weights below 16-bit float: smoke-tested with the target's [quantized_smoke] tolerance on real samples
    # only, and never shipped unless its accuracy was measured against eager fp32.
    quantized: bool
    # Needs calibration samples (activation ranges); a format whose scheme of this name is weight-only says
    # so in its own `calibrated_precisions`.
    calibrated: bool


# Ladder order: harshest first, mildest (the fp32 reference) last. A scheme that misses the accuracy
# budget steps down to the next one its format implements.
TABLE: tuple[Precision, ...] = (
    Precision("palettize-4", quantized=True, calibrated=False),
    Precision("palettize-6", quantized=True, calibrated=False),
    Precision("palettize-8", quantized=True, calibrated=False),
    Precision("int8-static", quantized=True, calibrated=True),
    Precision("int8-dynamic", quantized=True, calibrated=False),
    Precision("fp16", quantized=False, calibrated=False),
    Precision("fp32", quantized=False, calibrated=False),
)
REFERENCE = "fp32"
# Not a scheme: build every scheme a format offers, and ship the fastest (or smallest) within the accuracy budget.
AUTO = "auto"


def names() -> list[str]:
    """Every precision name, mildest first (the order users read them in)."""
    return [p.name for p in reversed(TABLE)]


def get(name: str) -> Precision | None:
    return next((p for p in TABLE if p.name == name), None)


def is_quantized(name: str) -> bool:
    precision = get(name)
    return precision is not None and precision.quantized


def ladder_after(name: str) -> list[str]:
    """The milder precisions a scheme steps down to when it misses the budget, in order (fp32 last)."""
    order = [p.name for p in TABLE]
    return order[order.index(name) + 1 :] if name in order else [REFERENCE]
