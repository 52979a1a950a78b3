"""pure/cpu_linear: float32 CPU linear layers through oneDNN equal `F.linear` to float32 rounding, and step aside for
anything else (other dtypes, autograd, empty input, the `XNEMO_CPU_LINEAR=blas` switch)."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from xnemo_core.pure import cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear.enabled(), reason="this torch build has no oneDNN linear op")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("shape", [(64, 320), (4, 96, 320), (2, 3, 17, 320)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_equals_f_linear(shape, with_bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(640, 320, generator=g) / 18
    b = torch.randn(640, generator=g) if with_bias else None
    with torch.inference_mode():
        out = cpu_linear.linear(x, w, b)
        ref = F.linear(x, w, b)
    assert out is not None and out.shape == ref.shape
    assert rel_err(out, ref) < 1e-5


def test_non_contiguous_input_is_read_right():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(320, 8, 16, generator=g).permute(1, 2, 0)  # [8, 16, 320], channels innermost by stride only
    w, b = torch.randn(128, 320, generator=g), torch.randn(128, generator=g)
    with torch.no_grad():
        assert rel_err(cpu_linear.linear(x, w, b), F.linear(x, w, b)) < 1e-5


def test_steps_aside_where_it_does_not_apply():
    w, b = torch.randn(8, 4), torch.randn(8)
    assert cpu_linear.linear(torch.randn(3, 4, dtype=torch.float64), w.double(), b.double()) is None
    assert cpu_linear.linear(torch.randn(3, 4).bfloat16(), w.bfloat16(), b.bfloat16()) is None
    assert cpu_linear.linear(torch.randn(3, 4, requires_grad=True), w, b) is None  # training keeps autograd
    assert cpu_linear.linear(torch.randn(0, 4), w, b) is None
    assert cpu_linear.linear(torch.randn(3, 4), w.t().contiguous().t(), b) is None  # a transposed weight view


def test_blas_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("XNEMO_CPU_LINEAR", "blas")
    try:
        off = importlib.reload(cpu_linear)
        assert not off.enabled()
        assert off.linear(torch.randn(3, 4), torch.randn(8, 4), None) is None
    finally:
        monkeypatch.delenv("XNEMO_CPU_LINEAR")
        assert importlib.reload(cpu_linear).enabled()
