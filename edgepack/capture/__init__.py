"""Capture: from an nn.Module to a checked program, with the hazards found and the device pass applied.

ladder.py        the strategy ladder (trace, script, hybrid) and its checks against eager
hazards.py       what tracing gets wrong, with the user's file:line and the fix
flatten.py       named inputs and outputs around any forward signature
check_inputs.py  the user's extra check inputs (--check-inputs)
devices.py       the device pass: nothing pinned to the machine the capture ran on
export.py        the torch.export capture (ExportedProgram), checked like the ladder's, failures diagnosed
"""

from .ladder import CapturedModel, CaptureError, capture

__all__ = ["CaptureError", "CapturedModel", "capture"]
