"""Quantize stage: per-format precision with each format's own tooling, measured against eager fp32.

plan.py         which data a build needs, loaded once before capture (static without calibration: an error)
calibration.py  calibration and evaluation samples (--calibration, --eval-data, the demo's splits)
accuracy.py     top-1 agreement, cosine, max abs error and SQNR of an artifact against eager
torch_ao.py     TorchScript Lite int8 (torch.ao.quantization, qnnpack)
ort.py          ONNX int8 (onnxruntime.quantization, QDQ)
ladder.py       the fallback ladder gated by the target's accuracy budget
"""
