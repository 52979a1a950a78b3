"""Linear layers on x86 CPUs through oneDNN instead of the BLAS that `torch.nn.functional.linear` calls.

On the CPU, torch runs a float32 `linear` as an MKL GEMM. MKL picks its AVX2 code on non-Intel processors, while
oneDNN (torch's `mkldnn` backend, already used for every convolution) runs its AVX-512 kernels on any CPU that has
them. At X-NeMo's official widths (320-1280 channels, GEGLU 2560-10240) oneDNN's matmul on a plain weight took
0.65-0.92x MKL's time on a 2-core AMD EPYC (benchmarks/results/side-by-side-cpu-official-size-*.txt), with no
packed copy of the weight: same memory, same maths, float32 rounding of a different summation order.

`linear` returns None where the fast path does not apply (another device or dtype, autograd, torch.compile, no
oneDNN), and the caller runs the ordinary layer. `XNEMO_CPU_LINEAR=blas` turns it off.
"""

from __future__ import annotations

import os

import torch


def _onednn_op():
    if os.environ.get("XNEMO_CPU_LINEAR", "onednn").lower() == "blas":
        return None
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):  # a torch build without the op
        return None


_OP = _onednn_op()


def enabled() -> bool:
    return _OP is not None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """`F.linear(x, weight, bias)` through oneDNN for float32 CPU tensors at inference; None: use the usual op."""
    if _OP is None or x.device.type != "cpu" or weight.device.type != "cpu":
        return None
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or (bias is not None and bias.dtype != torch.float32):
        return None
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return None
    if torch.compiler.is_compiling() or x.numel() == 0 or weight.layout != torch.strided:
        return None
    if not weight.is_contiguous() or (bias is not None and not bias.is_contiguous()):
        return None
    rows = x.reshape(-1, x.shape[-1])
    if not rows.is_contiguous():
        rows = rows.contiguous()
    out = _OP(rows, weight, bias, "none", [], "")
    return out.reshape(*x.shape[:-1], weight.shape[0])
