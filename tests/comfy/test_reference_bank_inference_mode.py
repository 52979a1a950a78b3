"""The reference bank's projected keys/values with weights made under torch.inference_mode, as ComfyUI runs nodes:
inference tensors keep no version counter, so the cache key must not read one (the demo workflow failed on it)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from xnemo_pack.xnemo_core.adapters.reference_bank import ReferenceBank


def test_projected_with_inference_mode_weights():
    with torch.inference_mode():
        attn = SimpleNamespace(to_k=torch.nn.Linear(8, 8), to_v=torch.nn.Linear(8, 8))
        bank = ReferenceBank({("down", 0, 0): torch.randn(1, 4, 8)}, (2, 2))
        k, v = bank.projected(("down", 0, 0), attn, "cpu", torch.float32)
        again = bank.projected(("down", 0, 0), attn, "cpu", torch.float32)
        ref = bank.get(("down", 0, 0), "cpu", torch.float32)
        assert torch.equal(k, attn.to_k(ref)) and torch.equal(v, attn.to_v(ref))
    assert again[0] is k and again[1] is v  # cached
