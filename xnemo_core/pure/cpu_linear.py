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


def _register_traceable_ops():
    """The oneDNN calls as opaque ops for torch.compile: dynamo traces each as a node and inductor calls it as it is
    (inductor's own lowering of the oneDNN op wants a frozen, packed weight), so compiled and eager UNets compute the
    same products. Registered once per process (this module may be reloaded)."""
    if _OP is None:
        return None, None
    if not (hasattr(torch.ops, "xnemo") and hasattr(torch.ops.xnemo, "cpu_linear")):

        @torch.library.custom_op("xnemo::cpu_linear", mutates_args=())
        def cpu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            return torch.ops.mkldnn._linear_pointwise.default(x, weight, bias, "none", [], "")

        @cpu_linear.register_fake
        def _(x, weight, bias):
            return x.new_empty((x.shape[0], weight.shape[0]))

        @torch.library.custom_op("xnemo::cpu_geglu", mutates_args=())
        def cpu_geglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            return _geglu(x, weight, bias)

        @cpu_geglu.register_fake
        def _(x, weight, bias):
            return x.new_empty((x.shape[0], weight.shape[0] // 2))

    return torch.ops.xnemo.cpu_linear.default, torch.ops.xnemo.cpu_geglu.default


def _geglu(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    hidden = weight.shape[0] // 2
    value_bias, gate_bias = (None, None) if bias is None else (bias[:hidden], bias[hidden:])
    gate = torch.ops.mkldnn._linear_pointwise.default(rows, weight[hidden:], gate_bias, "gelu", [], "none")
    return torch.ops.mkldnn._linear_pointwise.binary(rows, gate, weight[:hidden], value_bias, "mul")


_TRACEABLE, _TRACEABLE_GEGLU = _register_traceable_ops()


def enabled() -> bool:
    return _OP is not None


def _rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """`x` as contiguous rows [N, in] where the oneDNN path applies (float32 CPU inference), else None."""
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
    return rows if rows.is_contiguous() else rows.contiguous()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """`F.linear(x, weight, bias)` through oneDNN for float32 CPU tensors at inference; None: use the usual op."""
    rows = _rows(x, weight, bias)
    if rows is None:
        return None
    if torch.compiler.is_compiling():
        out = _TRACEABLE(rows, weight, bias)
    else:
        out = _OP(rows, weight, bias, "none", [], "")
    return out.reshape(*x.shape[:-1], weight.shape[0])


def geglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """GEGLU `value * gelu(gate)` of the projection `F.linear(x, weight, bias)` ([value ; gate] halves), as two
    oneDNN products on the weight's halves (contiguous row slices: no copy): the gate's with the GELU fused, the
    value's with the multiply by the gate fused. The activation never exists at twice the hidden width, and no
    elementwise pass reads it again. None: use the usual layers."""
    rows = _rows(x, weight, bias)
    if rows is None or weight.shape[0] % 2:
        return None
    out = _TRACEABLE_GEGLU(rows, weight, bias) if torch.compiler.is_compiling() else _geglu(rows, weight, bias)
    return out.reshape(*x.shape[:-1], weight.shape[0] // 2)
