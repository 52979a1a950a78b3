"""Linear layers on x86 CPUs through oneDNN instead of the BLAS that `torch.nn.functional.linear` calls.

On the CPU, torch runs a float32 `linear` as an MKL GEMM. MKL picks its AVX2 code on non-Intel processors, while
oneDNN (torch's `mkldnn` backend, already used for every convolution) runs its AVX-512 kernels on any CPU that has
them. At X-NeMo's official widths (320-1280 channels, GEGLU 2560-10240) oneDNN's matmul on a plain weight took
0.65-0.92x MKL's time on a 2-core AMD EPYC (benchmarks/results/side-by-side-cpu-official-size-*.txt), with no
packed copy of the weight: same memory, same maths, float32 rounding of a different summation order.

`linear` returns None where the fast path does not apply (another device or dtype, autograd, no oneDNN), and the
caller runs the ordinary layer. Under torch.compile it is one opaque op (`xnemo::cpu_linear`), so a compiled UNet
computes the same products as the eager one. `XNEMO_CPU_LINEAR=blas` turns it off.
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


def _register_traceable_op():
    """The oneDNN call as one opaque op for torch.compile: dynamo traces it as a node and inductor calls it as it is
    (inductor's own lowering of the oneDNN op wants a frozen, packed weight), so compiled and eager UNets compute the
    same products. Registered once per process (this module may be reloaded)."""
    if _OP is None:
        return None
    if hasattr(torch.ops, "xnemo") and hasattr(torch.ops.xnemo, "cpu_linear"):
        return torch.ops.xnemo.cpu_linear.default

    @torch.library.custom_op("xnemo::cpu_linear", mutates_args=())
    def cpu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise.default(x, weight, bias, "none", [], "")

    @cpu_linear.register_fake
    def _(x, weight, bias):
        return x.new_empty((x.shape[0], weight.shape[0]))

    return torch.ops.xnemo.cpu_linear.default


_TRACEABLE = _register_traceable_op()


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
    if x.numel() == 0 or weight.layout != torch.strided:
        return None
    if not weight.is_contiguous() or (bias is not None and not bias.is_contiguous()):
        return None
    rows = x.reshape(-1, x.shape[-1])
    if not rows.is_contiguous():
        rows = rows.contiguous()
    if torch.compiler.is_compiling():
        out = _TRACEABLE(rows, weight, bias)
    else:
        out = _OP(rows, weight, bias, "none", [], "")
    return out.reshape(*x.shape[:-1], weight.shape[0])
