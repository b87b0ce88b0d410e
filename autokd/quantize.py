"""Post-training int8 quantisation of a trained student, with torch's own tools on the CPU (x86 backend).

- ``mlp``: dynamic quantisation of every Linear (`torch.ao.quantization.quantize_dynamic`): int8
  weights with a scale and zero point per output channel; activations are quantised per batch at
  run time, so no calibration is needed.
- ``cnn`` and ``resnet``: static quantisation in FX graph mode (`prepare_fx`/`convert_fx`, the
  x86 qconfig): each convolution is fused with its batchnorm and relu, weights are int8 per output
  channel, and the activation ranges are calibrated on training samples.

Any other family is refused with a ValueError that names it. The size of the result is
`sizes.ModelSize.bytes_int8`, known before training; MACs are unchanged. The quantised model takes
normalised inputs like the student (the exported student.int8.pt takes raw ones) and runs on the
CPU only::

    int8 = quantize_student(student, calibration=data.x_train[:1024])   # a new model; student untouched
    accuracy = evaluate_int8(int8, data.x_val, data.y_val)

torch marks `torch.ao.quantization` deprecated in favour of torchao (not a dependency); both calls
to it are here, so moving is local to this module.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from autokd.zoo import ZooModel

DYNAMIC_FAMILIES = ("mlp",)
STATIC_FAMILIES = ("cnn", "resnet")
BACKEND = "x86"  # torch's CPU quantisation backend (fbgemm with x86 kernels)
CALIBRATION_BATCH = 256


def quantize_student(student: ZooModel, calibration: torch.Tensor | None = None) -> nn.Module:
    """An int8 copy of the trained `student` (eval mode, CPU); `calibration`: normalised inputs, needed for
    cnn and resnet (the first training samples, `QuantizeSpec.calibration_samples` of them)."""
    family = getattr(student, "arch", {}).get("family")
    if BACKEND not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantize.int8: torch's {BACKEND!r} quantisation backend is not available here "
                         f"(engines: {torch.backends.quantized.supported_engines})")
    model = copy.deepcopy(student).cpu().eval()
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices, once per call
        warnings.simplefilter("ignore")
        if family in DYNAMIC_FAMILIES:
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, inplace=True).eval()
        if family in STATIC_FAMILIES:
            if calibration is None or len(calibration) == 0:
                raise ValueError(f"quantize.int8: a {family} student needs calibration inputs (static quantisation)")
            return _quantize_static(model, calibration)
    raise ValueError(f"quantize.int8: student family {family!r} is not supported; int8 students are "
                     f"{[*DYNAMIC_FAMILIES, *STATIC_FAMILIES]}")


def _quantize_static(model: nn.Module, calibration: torch.Tensor) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    calibration = calibration.detach().cpu().float()
    prepared = prepare_fx(model, get_default_qconfig_mapping(BACKEND), (calibration[:2],))
    with torch.no_grad():
        for batch in calibration.split(CALIBRATION_BATCH):
            prepared(batch)  # observers record the activation ranges
    return convert_fx(prepared).eval()


def evaluate_int8(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 2048) -> float:
    """Accuracy of a quantised model on in-memory tensors (CPU), as `distill.evaluate` computes it for fp32."""
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            logits = model(inputs[start:start + batch_size].cpu())
            correct += (logits.argmax(dim=1) == labels[start:start + batch_size].cpu()).sum().item()
    return correct / max(len(labels), 1)


def int8_val_accuracy(student: ZooModel, data, calibration_samples: int) -> float:
    """`student` quantised (calibrated on the first training samples) and evaluated on the validation split."""
    return evaluate_int8(quantize_student(student, data.x_train[:calibration_samples]), data.x_val, data.y_val)
