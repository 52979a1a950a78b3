"""Motion encoder on tiny random weights: shapes, composition, strict loading, size reading, fusion head."""

from __future__ import annotations

import pytest
import torch

from xnemo_pack.xnemo_core.pure.errors import CheckpointError
from xnemo_pack.xnemo_core.pure.motion_encoder import (
    MotionEncoder,
    MotionFusion,
    attention_heads_for_width,
    own_leftovers,
)


def tiny_config(**overrides) -> dict:
    # The FAN convolutions have fixed official sizes; only the attention, hourglass depth and heads shrink.
    config = dict(attention_heads=2, attention_head_dim=16, ff_mult=2, hourglass_depth=1)
    return {**config, **overrides}


def tiny_encoder(seed: int = 0, **overrides) -> MotionEncoder:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = MotionEncoder(**tiny_config(**overrides))
        # Non-trivial BatchNorm statistics, so a batch-statistics bug would show.
        for name, buffer in encoder.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    return encoder.eval().requires_grad_(False)


def tiny_inputs(frames: int = 2, bbox_dim: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator("cpu").manual_seed(seed)
    crops = torch.rand(frames, 3, 224, 224, generator=generator) * 2 - 1
    f_rts = torch.randn(frames, bbox_dim, generator=generator)
    return crops, f_rts


def test_forward_is_encode_then_fuse():
    encoder = tiny_encoder()
    crops, f_rts = tiny_inputs()
    tokens = encoder(crops, f_rts)
    features = encoder.encode_face(crops)
    assert features.shape == (2, 512)
    assert tokens.shape == (2, 32, 16)
    assert torch.isfinite(tokens).all()
    assert torch.equal(tokens, encoder.fuse(features, f_rts))


def test_frames_are_encoded_independently():
    # One crop at a time: the batch must not leak across frames (no temporal context, running BN statistics).
    encoder = tiny_encoder()
    crops, _ = tiny_inputs(frames=2)
    together = encoder.encode_face(crops)
    alone = encoder.encode_face(crops[1:])
    torch.testing.assert_close(together[1:], alone, rtol=0, atol=1e-5)  # reordering noise only


def test_rejects_video_shaped_input():
    encoder = tiny_encoder()
    with pytest.raises(ValueError, match="flatten"):
        encoder.encode_face(torch.zeros(1, 3, 2, 224, 224))


def test_patch_position_tables_are_not_in_the_state_dict():
    encoder = tiny_encoder()
    keys = encoder.state_dict().keys()
    assert not [k for k in keys if k.endswith("pos_embed.pos_embed")]
    assert encoder.model.att_1.pos_embed.pos_embed.shape == (1, 784, 32)
    assert "pe" in keys and "bbox_proj.3.weight" in keys and "final_proj.bias" in keys


def test_from_state_dict_reads_sizes():
    config = dict(ff_mult=3, hourglass_depth=2, feature_dim=256, token_dim=8, bbox_dim=4, bbox_embed_dim=32)
    source = tiny_encoder(**config)
    loaded = MotionEncoder.from_state_dict(source.state_dict())
    for name, value in {**tiny_config(**config)}.items():
        assert getattr(loaded, name) == value, name
    crops, f_rts = tiny_inputs(frames=1, bbox_dim=4)
    assert loaded(crops, f_rts).shape == (1, 32, 8)
    assert torch.equal(loaded(crops, f_rts), source(crops, f_rts))


def test_attention_head_rule_and_override():
    assert attention_heads_for_width(1024) == 8  # official 8 x 128
    assert attention_heads_for_width(32) == 2  # tiny fixture 2 x 16
    with pytest.raises(CheckpointError, match="attention_heads"):
        attention_heads_for_width(24)
    state = tiny_encoder().state_dict()
    overridden = MotionEncoder.from_state_dict(state, attention_heads=4)
    assert (overridden.attention_heads, overridden.attention_head_dim) == (4, 8)


def test_strict_loading_names_every_bad_key():
    state = dict(tiny_encoder().state_dict())
    del state["final_proj.bias"]
    del state["model.att_2.proj_out.weight"]
    state["model.extra.weight"] = torch.zeros(1)
    state["model.l0.weight"] = torch.zeros(67, 256, 1, 1)
    with pytest.raises(CheckpointError) as caught:
        MotionEncoder.from_state_dict(state)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "2 missing" in message and "final_proj.bias" in message and "model.att_2.proj_out.weight" in message
    assert "1 unexpected" in message and "model.extra.weight" in message
    assert "model.l0.weight expected (68, 256, 1, 1) found (67, 256, 1, 1)" in message


def test_fusion_head_matches_encoder_and_is_independent():
    encoder = tiny_encoder()
    features = torch.randn(3, 512, generator=torch.Generator("cpu").manual_seed(1))
    f_rts = torch.randn(3, 3, generator=torch.Generator("cpu").manual_seed(2))
    head = encoder.fusion_head()
    assert isinstance(head, MotionFusion)
    assert set(head.state_dict()) == {
        "pe",
        "bbox_proj.0.weight",
        "bbox_proj.0.bias",
        "bbox_proj.3.weight",
        "bbox_proj.3.bias",
        "final_proj.weight",
        "final_proj.bias",
    }
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in head.state_dict().values())
    assert torch.equal(head(features, f_rts), encoder.fuse(features, f_rts))
    head.final_proj.bias.add_(1.0)
    assert not torch.equal(head(features, f_rts), encoder.fuse(features, f_rts))  # a copy, not shared weights


def test_load_then_cast_dtype():
    state = tiny_encoder().state_dict()
    half = MotionEncoder.from_state_dict(state, dtype=torch.bfloat16)
    loaded = half.state_dict()
    assert loaded["model.bn1.num_batches_tracked"].dtype == torch.int64
    assert loaded["final_proj.weight"].dtype == torch.bfloat16
    assert torch.equal(loaded["final_proj.weight"], state["final_proj.weight"].to(torch.bfloat16))
    # Fixed sin-cos tables stay float32 (cast where used), so low-precision storage does not round them.
    assert half.pe.dtype == torch.float32 and half.model.att_2.pos_embed.pos_embed.dtype == torch.float32
    crops, f_rts = tiny_inputs(frames=1)
    assert torch.isfinite(half(crops.bfloat16(), f_rts.bfloat16())).all()


def test_attention_goes_through_the_injected_function():
    calls = []

    def counting_attention(q, k, v):
        calls.append(q.shape)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    state = tiny_encoder().state_dict()
    crops, f_rts = tiny_inputs(frames=1)
    plain = MotionEncoder.from_state_dict(state)
    counted = MotionEncoder.from_state_dict(state, attention_fn=counting_attention)
    assert torch.equal(counted(crops, f_rts), plain(crops, f_rts))
    assert calls == [torch.Size([1, 2, 784, 16])] * 3  # att_1, att_2, att_3: [N, heads, tokens, head_dim]


def test_own_leftovers_copies_only_what_a_converting_load_kept():
    """Issue 21: one tensor left as a view of a memory-mapped file keeps the whole file resident."""
    source = {"w": torch.ones(3, dtype=torch.float16), "pe": torch.zeros(2), "n": torch.tensor(4)}
    cast = {"w": source["w"].float(), "pe": source["pe"], "n": source["n"]}
    owned = own_leftovers(cast, source)
    assert owned["w"] is cast["w"]
    for k in ("pe", "n"):
        assert torch.equal(owned[k], source[k])
        assert owned[k].untyped_storage().data_ptr() != source[k].untyped_storage().data_ptr()
    assert own_leftovers(dict(source), source) == source  # nothing converted: the mapped tensors are the weights
    assert all(own_leftovers(dict(source), source)[k] is v for k, v in source.items())


def test_from_state_dict_keeps_no_view_of_a_converted_checkpoint():
    sd = {k: v.half() if v.is_floating_point() else v for k, v in tiny_encoder().state_dict().items()}
    encoder = MotionEncoder.from_state_dict(sd, dtype=torch.float32)
    ptrs = {v.untyped_storage().data_ptr() for v in sd.values()}
    assert not ptrs & {t.untyped_storage().data_ptr() for t in (*encoder.parameters(), *encoder.buffers())}
