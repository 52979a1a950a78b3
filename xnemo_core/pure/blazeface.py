"""BlazeFace short-range face detection in pure torch, reproducing MediaPipe Tasks' FaceDetector.

The official X-NeMo preprocessing crops around the boxes of MediaPipe's FaceDetector with the short-range BlazeFace
model (`blaze_face_short_range.tflite`). This module reads that file's network (tflite.py) and re-does MediaPipe's
whole path in torch, batched over frames, on the caller's device:

1. the frame is letterboxed into the model's 128x128 input (keep aspect, black border): a perspective warp with
   OpenCV's fixed-point bilinear sampling (1/32-pixel positions, 15-bit weights) of the uint8 frame, then mapped to
   the metadata's input range ([-1, 1]);
2. the network gives 896 anchor regressions (box + 6 keypoints) and scores;
3. SSD anchors (strides 8, 16, 16, 16; fixed size 1), box/keypoint decoding (scale 128), sigmoid scores (clipped
   to +-100), score threshold 0.5;
4. weighted non-maximum suppression (IoU > 0.3: score-weighted mean of the overlapping boxes, the best score kept);
5. projection out of the letterbox into the frame and truncation to whole pixels, as the Tasks API returns them.

The warp in step 1 is integer arithmetic, so the input is bit-exact with MediaPipe's: each output pixel's source
position is rounded to 1/32 pixel (`INTER_BITS`), which splits it into a whole pixel and a fraction f of 0..31; the
two neighbours along an axis get weights 32 - f and f. A pixel is the sum of its four neighbours times the products
of their row and column weights (1/1024 units), scaled to OpenCV's 15-bit coefficients (x `COEF_FROM_WEIGHT_PRODUCT`)
and rounded back to uint8 (+ `COEF_ROUND`, >> `INTER_REMAP_COEF_BITS`). Only then does it become float.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import tflite
from .errors import XNeMoError

MODEL_NAME = "blaze_face_short_range.tflite"
BUNDLED_MODEL = Path(__file__).resolve().parents[2] / "models" / MODEL_NAME  # shipped with the pack (models/README.md)
MODEL_SHA256 = "b4578f35940bf5a1a655214a1cce5cab13eba73c1297cd78e1a04c2380b0152f"
INPUT_SIZE = 128
NUM_ANCHORS = 896
MIN_SCORE = 0.5
MIN_SUPPRESSION_IOU = 0.3
SCORE_CLIP = 100.0
ANCHOR_STRIDES = (8, 16, 16, 16)

# OpenCV's fixed-point bilinear sampling (imgproc's INTER_BITS / INTER_REMAP_COEF_BITS), which MediaPipe's CPU
# letterbox warp (warpPerspective, INTER_LINEAR) uses on uint8 frames; see `Warp` and `model_input`.
INTER_BITS = 5  # a source position is rounded to 1/32 pixel: whole pixel = fixed >> 5, fraction = fixed & 31
INTER_TAB_SIZE = 1 << INTER_BITS  # 32 steps per pixel; a 1-D weight pair is (32 - fraction, fraction)
INTER_REMAP_COEF_BITS = 15  # bilinear weights are 15-bit fixed point: the four of a pixel sum to 1 << 15
# wx * wy has 2 * INTER_BITS = 10 fractional bits; times 32 it is OpenCV's 15-bit coefficient
COEF_FROM_WEIGHT_PRODUCT = 1 << (INTER_REMAP_COEF_BITS - 2 * INTER_BITS)
COEF_ROUND = 1 << (INTER_REMAP_COEF_BITS - 1)  # + 0.5 before the shift: (sum + 2^14) >> 15 rounds to nearest


class BlazeFaceModelError(XNeMoError):
    """The BlazeFace model file is missing, corrupt or not the short-range face detector."""


# ----------------------------------------------------------------------------------------------------------------------
# The network: the tflite op list executed in torch (NCHW inside).

_SUPPORTED = {
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "ADD",
    "RELU",
    "PAD",
    "MAX_POOL_2D",
    "RESHAPE",
    "CONCATENATION",
    "DEQUANTIZE",
}
_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


def _same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after): the extra pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class BlazeFaceNet(torch.nn.Module):
    """The short-range BlazeFace network, built from the operators of the .tflite file.

    `forward(x)` takes [B, 3, 128, 128] float in the model's input range and returns (regressors [B, 896, 16],
    score logits [B, 896]).
    """

    def __init__(self, model: tflite.Model) -> None:
        super().__init__()
        unsupported = sorted({op.op for op in model.operators} - _SUPPORTED)
        if unsupported:
            raise BlazeFaceModelError(f"the model uses operators this reader does not run: {unsupported}")
        if len(model.inputs) != 1 or model.tensors[model.inputs[0]].shape != (1, INPUT_SIZE, INPUT_SIZE, 3):
            raise BlazeFaceModelError(
                "not the short-range BlazeFace model: expected one 1x128x128x3 input, got "
                f"{[model.tensors[i].shape for i in model.inputs]}"
            )
        outs = {model.tensors[i].shape: i for i in model.outputs}
        if set(outs) != {(1, NUM_ANCHORS, 16), (1, NUM_ANCHORS, 1)}:
            raise BlazeFaceModelError(
                f"not the short-range BlazeFace model: expected outputs 1x896x16 and 1x896x1, got {sorted(outs)}"
            )
        self._input = model.inputs[0]
        self._boxes_out, self._scores_out = outs[(1, NUM_ANCHORS, 16)], outs[(1, NUM_ANCHORS, 1)]
        shapes = {t.index: t.shape for t in model.tensors}
        consts: dict[int, np.ndarray] = {t.index: t.data for t in model.tensors if t.data is not None}
        self._steps: list[tuple] = []
        params = 0
        for op in model.operators:
            if op.op == "DEQUANTIZE":  # fp16 weights -> fp32 constants, resolved now
                consts[op.outputs[0]] = consts[op.inputs[0]].astype(np.float32)
                continue
            out = op.outputs[0]
            if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                x, w, b = op.inputs
                weight = torch.from_numpy(np.ascontiguousarray(consts[w], dtype=np.float32))
                if op.op == "CONV_2D":  # OHWI -> OIHW
                    weight, groups = weight.permute(0, 3, 1, 2), 1
                else:  # 1HWC -> C1HW
                    weight, groups = weight.permute(3, 0, 1, 2), weight.shape[-1]
                bias = torch.from_numpy(np.asarray(consts[b], dtype=np.float32)) if b >= 0 else None
                name = f"p{len(self._steps)}"
                self.register_buffer(name + "_w", weight.contiguous(memory_format=torch.channels_last))
                if bias is not None:
                    self.register_buffer(name + "_b", bias)
                params += weight.numel() + (bias.numel() if bias is not None else 0)
                opt = op.options
                kh, kw = weight.shape[2:]
                pad = (0, 0, 0, 0)
                if opt["padding"] == 0:  # SAME
                    ph = _same_padding(shapes[x][1], kh, opt["stride_h"], opt["dilation_h_factor"])
                    pw = _same_padding(shapes[x][2], kw, opt["stride_w"], opt["dilation_w_factor"])
                    pad = (pw[0], pw[1], ph[0], ph[1])
                self._steps.append(
                    (
                        "conv",
                        out,
                        x,
                        name,
                        bias is not None,
                        pad,
                        (opt["stride_h"], opt["stride_w"]),
                        (opt["dilation_h_factor"], opt["dilation_w_factor"]),
                        groups,
                        opt["fused_activation_function"],
                    )
                )
            elif op.op == "ADD":
                self._steps.append(("add", out, op.inputs[0], op.inputs[1], op.options["fused_activation_function"]))
            elif op.op == "RELU":
                self._steps.append(("relu", out, op.inputs[0]))
            elif op.op == "PAD":
                paddings = consts[op.inputs[1]].astype(int).tolist()  # NHWC [[before, after]] per axis
                if paddings[0] != [0, 0]:
                    raise BlazeFaceModelError("PAD over the batch axis is not supported")
                (ht, hb), (wl, wr), (cb, ca) = paddings[1], paddings[2], paddings[3]
                self._steps.append(("pad", out, op.inputs[0], (wl, wr, ht, hb, cb, ca)))
            elif op.op == "MAX_POOL_2D":
                opt = op.options
                x = op.inputs[0]
                pad = (0, 0, 0, 0)
                if opt["padding"] == 0:
                    ph = _same_padding(shapes[x][1], opt["filter_height"], opt["stride_h"])
                    pw = _same_padding(shapes[x][2], opt["filter_width"], opt["stride_w"])
                    pad = (pw[0], pw[1], ph[0], ph[1])
                self._steps.append(
                    (
                        "pool",
                        out,
                        x,
                        (opt["filter_height"], opt["filter_width"]),
                        (opt["stride_h"], opt["stride_w"]),
                        pad,
                    )
                )
            elif op.op == "RESHAPE":
                self._steps.append(("reshape", out, op.inputs[0], shapes[out][1:], len(shapes[op.inputs[0]]) == 4))
            elif op.op == "CONCATENATION":
                axis = op.options["axis"]
                rank = len(shapes[out])
                axis = axis % rank
                if rank == 4:
                    axis = _NHWC_TO_NCHW_AXIS[axis]
                self._steps.append(("concat", out, op.inputs, axis))
        self._steps = _fuse_channel_padding(self._steps)
        self._private = {src for src, count in _users(self._steps).items() if count == 1}  # may be changed in place
        self.parameter_count = params
        # forward keeps every intermediate until it returns, so its peak is their sum (float32, per frame)
        self.activation_bytes = 4 * sum(math.prod(shapes[step[1]]) for step in self._steps)

    @staticmethod
    def _act(x: torch.Tensor, kind: int) -> torch.Tensor:
        if kind == 0:
            return x
        if kind == 1:
            return F.relu(x, inplace=True)
        if kind == 3:
            return F.relu6(x, inplace=True)
        raise BlazeFaceModelError(f"fused activation {kind} is not supported")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, 128, 128] in [-1, 1] -> (regressors [B, 896, 16], score logits [B, 896])."""
        values: dict[int, torch.Tensor] = {self._input: x.contiguous(memory_format=torch.channels_last)}
        for step in self._steps:
            kind, out = step[0], step[1]
            if kind == "conv":
                _, _, src, name, has_bias, pad, stride, dilation, groups, act = step
                h = values[src]
                padding = 0
                if pad[0] == pad[1] == pad[2] == pad[3]:
                    padding = pad[0]  # symmetric: inside the convolution, no padded copy
                elif any(pad):
                    h = F.pad(h, pad)
                h = F.conv2d(
                    h,
                    getattr(self, name + "_w"),
                    getattr(self, name + "_b") if has_bias else None,
                    stride,
                    padding,
                    dilation,
                    groups,
                )
                values[out] = self._act(h, act)
            elif kind == "add":
                values[out] = self._act(values[step[2]] + values[step[3]], step[4])
            elif kind == "add_padded":  # ADD of a channel-zero-padded tensor: add it into the first channels only
                _, _, narrow, wide, act = step
                h = values[wide] if wide in self._private else values[wide].clone()
                h[:, : values[narrow].shape[1]] += values[narrow]
                values[out] = self._act(h, act)
            elif kind == "relu":
                values[out] = F.relu(values[step[2]], inplace=step[2] in self._private)
            elif kind == "pad":
                wl, wr, ht, hb, cb, ca = step[3]
                values[out] = F.pad(values[step[2]], (wl, wr, ht, hb, cb, ca))
            elif kind == "pool":
                _, _, src, kernel, stride, pad = step
                h = values[src]
                if any(pad):
                    h = F.pad(h, pad, value=-math.inf)
                values[out] = F.max_pool2d(h, kernel, stride)
            elif kind == "reshape":
                _, _, src, shape, from_4d = step
                h = values[src]
                if from_4d:
                    h = h.permute(0, 2, 3, 1)  # back to the NHWC element order the model was written for
                values[out] = h.reshape(h.shape[0], *shape)
            elif kind == "concat":
                values[out] = torch.cat([values[i] for i in step[2]], dim=step[3])
        return values[self._boxes_out], values[self._scores_out][..., 0]


def _users(steps: list[tuple]) -> dict[int, int]:
    """How many steps read each tensor."""
    users: dict[int, int] = {}
    for step in steps:
        sources = step[2] if step[0] == "concat" else step[2:4] if step[0] in ("add", "add_padded") else step[2:3]
        for src in sources:
            users[src] = users.get(src, 0) + 1
    return users


def _fuse_channel_padding(steps: list[tuple]) -> list[tuple]:
    """BlazeBlocks widen their shortcut by zero-padding channels before the ADD; padding a channels-last tensor is a
    slow copy, so a PAD that only appends channels and feeds nothing but one ADD becomes an add into those channels."""
    users = _users(steps)
    pads = {
        step[1]: step
        for step in steps
        if step[0] == "pad" and step[3][:5] == (0, 0, 0, 0, 0) and users.get(step[1]) == 1
    }
    out = []
    for step in steps:
        if step[1] in pads:
            continue
        if step[0] == "add" and (step[2] in pads or step[3] in pads):
            padded, other = (step[2], step[3]) if step[2] in pads else (step[3], step[2])
            step = ("add_padded", step[1], pads[padded][2], other, step[4])
        out.append(step)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Loading


def load_network(path: str | Path) -> BlazeFaceNet:
    """Read and check the BlazeFace short-range model file (sha256 and structure); clear errors for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise BlazeFaceModelError(
            f"BlazeFace model file not found: {path}; it ships in the pack's models/ folder "
            f"(restore it, e.g. git checkout models/) or put {MODEL_NAME} from the official "
            "X-NeMo repository into ComfyUI's models/x-nemo/; or pick the 'haar' detector"
        )
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != MODEL_SHA256:
        raise BlazeFaceModelError(
            f"{path} is not the official {MODEL_NAME} (sha256 {digest[:16]}..., expected "
            f"{MODEL_SHA256[:16]}...): the file is corrupt or a different model; restore it "
            "from the pack or the official X-NeMo repository"
        )
    try:
        model = tflite.read_model(data)
    except tflite.TFLiteFormatError as exc:
        raise BlazeFaceModelError(f"{path} cannot be read as a TFLite model: {exc}") from exc
    norm = tflite.input_normalization(model)
    if norm is not None and norm != (127.5, 127.5):
        raise BlazeFaceModelError(f"{path}: unexpected input normalisation {norm}")
    return BlazeFaceNet(model).eval()


# ----------------------------------------------------------------------------------------------------------------------
# MediaPipe's pre- and post-processing


def ssd_anchors() -> torch.Tensor:
    """Anchor centres (x, y) [896, 2] of the short-range model, in MediaPipe's order: stride-8 layer (16x16 cells,
    2 anchors each), then the three stride-16 layers merged (8x8 cells, 6 anchors each). Anchor size is fixed to 1."""
    out = []
    layer = 0
    while layer < len(ANCHOR_STRIDES):
        stride = ANCHOR_STRIDES[layer]
        same = 0
        while layer + same < len(ANCHOR_STRIDES) and ANCHOR_STRIDES[layer + same] == stride:
            same += 1
        per_cell = 2 * same  # aspect ratio 1.0 + the interpolated scale, per merged layer
        cells = -(-INPUT_SIZE // stride)
        ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
        centre = torch.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], dim=-1).float().reshape(-1, 1, 2)
        out.append(centre.expand(-1, per_cell, 2).reshape(-1, 2))
        layer += same
    return torch.cat(out)


@dataclass(frozen=True, kw_only=True)
class Letterbox:
    """Where the model's 128x128 input sits in the frame: the square (or padded) region of interest."""

    width: int  # frame size
    height: int
    roi_cx: float  # region of interest in frame pixels (float32 values, as MediaPipe holds them)
    roi_cy: float
    roi_w: float
    roi_h: float


def letterbox(width: int, height: int, region: Sequence[float] | None = None) -> Letterbox:
    """MediaPipe's ImageToTensor ROI (GetRoi + PadRoi, keep_aspect_ratio): the frame, or `region` (x0, y0, x1, y1
    in pixels), grown on its short side to the square the 128x128 tensor maps to."""
    f32 = np.float32
    if region is None:
        cx, cy, w, h = f32(0.5) * f32(width), f32(0.5) * f32(height), f32(width), f32(height)
    else:
        x0, y0, x1, y1 = (float(v) for v in region)
        cx, cy, w, h = f32((x0 + x1) / 2), f32((y0 + y1) / 2), f32(x1 - x0), f32(y1 - y0)
    if h / w < 1.0:  # tensor aspect (1) > roi aspect: pad vertically
        h = w
    else:
        w = h
    return Letterbox(width=width, height=height, roi_cx=float(cx), roi_cy=float(cy), roi_w=float(w), roi_h=float(h))


@dataclass(frozen=True, kw_only=True)
class Warp:
    """The letterbox warp into the 128x128 input as index and weight tables (one per frame size and region).

    MediaPipe's CPU path is OpenCV's warpPerspective (INTER_LINEAR, black border) of the uint8 frame: source positions
    rounded to 1/32 pixel, bilinear weights that are products of the 5-bit fractions in 15-bit fixed point. For an
    axis-aligned letterbox that separates into rows then columns with the same integers, so it runs batched in torch
    on any device. (OpenCV's positions come from an inverted double matrix: where one lands exactly halfway between
    two 1/32 steps, on odd frame sizes, OpenCV may round the other way; a few input pixels then differ by some LSB.)
    """

    x0: torch.Tensor  # [128] left source column of each output column (clamped into the frame)
    x1: torch.Tensor
    wx: torch.Tensor  # [2, 128] int32 column weights (sum 32; 0 for a neighbour outside the frame)
    y0: torch.Tensor
    y1: torch.Tensor
    wy: torch.Tensor
    need_x1: bool  # False when every column falls on a whole pixel inside (e.g. 512 px frames: every 4th pixel)
    need_y1: bool


def make_warp(box: Letterbox, device: torch.device | str = "cpu") -> Warp:
    size = INPUT_SIZE
    f32 = np.float32
    left = float(f32(box.roi_cx) - f32(box.roi_w) * f32(0.5))
    top = float(f32(box.roi_cy) - f32(box.roi_h) * f32(0.5))
    grid = torch.arange(size, dtype=torch.float64)

    def axis(start: float, step: float, limit: int):
        fixed = torch.round((grid * step + start) * INTER_TAB_SIZE).to(torch.int64)  # cvRound: half to even
        lo, frac = fixed >> INTER_BITS, fixed & (INTER_TAB_SIZE - 1)
        hi = lo + 1
        inside = torch.stack([(lo >= 0) & (lo < limit), (hi >= 0) & (hi < limit)])
        w = torch.stack([INTER_TAB_SIZE - frac, frac]) * inside
        return (
            lo.clamp(0, limit - 1).to(device),
            hi.clamp(0, limit - 1).to(device),
            w.to(device=device, dtype=torch.int32),
            bool(w[1].any()),
        )

    x0, x1, wx, nx = axis(left, box.roi_w / size, box.width)
    y0, y1, wy, ny = axis(top, box.roi_h / size, box.height)
    return Warp(x0=x0, x1=x1, wx=wx, y0=y0, y1=y1, wy=wy, need_x1=nx, need_y1=ny)


def model_input(frames: torch.Tensor, warp: Warp) -> torch.Tensor:
    """RGB frames [B, H, W, 3] (uint8, or ComfyUI's float 0..1, rounded to uint8 as decoded video is) -> the model
    input [B, 3, 128, 128] in [-1, 1], channels-last memory (`letterbox_pixels`, then `normalise`)."""
    return normalise(letterbox_pixels(frames, warp))


def letterbox_pixels(frames: torch.Tensor, warp: Warp) -> torch.Tensor:
    """RGB frames [B, H, W, 3] (uint8 or float 0..1) -> the letterboxed uint8 input [B, 128, 128, 3]: the warp and
    OpenCV's rounding ((sum + 2^14) >> 15), on the frames' device (the warp's tables must be there too). Only the
    sampled rows are ever converted. This is what the detector moves to its device: 48 KiB per frame."""

    def rows(index: torch.Tensor) -> torch.Tensor:
        picked = frames.index_select(1, index)
        if picked.dtype == torch.uint8:
            return picked.to(torch.int32)
        return picked.float().mul(255).add_(0.5).clamp_(0, 255).to(torch.int32)

    def columns(picked: torch.Tensor) -> torch.Tensor:  # [B, 128, W, 3] -> [B, 128, 128, 3] times the column weights
        out = picked.index_select(2, warp.x0) * warp.wx[0].view(1, 1, -1, 1)
        if warp.need_x1:
            out += picked.index_select(2, warp.x1) * warp.wx[1].view(1, 1, -1, 1)
        return out

    acc = columns(rows(warp.y0)) * warp.wy[0].view(1, -1, 1, 1)
    if warp.need_y1:
        acc += columns(rows(warp.y1)) * warp.wy[1].view(1, -1, 1, 1)
    return ((acc * COEF_FROM_WEIGHT_PRODUCT + COEF_ROUND) >> INTER_REMAP_COEF_BITS).clamp_(0, 255).to(torch.uint8)


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 128, 128, 3] -> float32 [B, 3, 128, 128] in [-1, 1] (channels-last memory), x * 2/255 - 1 as
    MediaPipe's convertTo."""
    img = pixels.to(torch.float32) * np.float32(2.0 / 255.0) + np.float32(-1.0)
    return img.permute(0, 3, 1, 2)


@contextmanager
def exact_float32():
    """TF32 off for convolutions and matmuls (restored after): MediaPipe computes in float32, and cuDNN may otherwise
    use TF32 for the convolutions on Ampere and later GPUs. Set through the fp32_precision API only, since torch
    refuses to read TF32 state set through a mix of the legacy and new APIs."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


@dataclass(frozen=True, kw_only=True)
class FaceDetection:
    """One face: pixel box (x0, y0, x1, y1) as MediaPipe's Tasks API returns it, score, 6 keypoints (normalised)."""

    box: tuple[int, int, int, int]
    score: float
    keypoints: np.ndarray  # [6, 2] normalised (x, y) in the frame: eyes, nose tip, mouth, ear tragions


def decode(
    raw: torch.Tensor, logits: torch.Tensor, anchors: torch.Tensor, min_score: float = MIN_SCORE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw regressions [B, 896, 16] + logits [B, 896] -> boxes (xmin, ymin, xmax, ymax) [B, 896, 4] and keypoints
    [B, 896, 6, 2] in the 128x128 tensor's normalised coordinates, scores [B, 896] (0 where below `min_score`)."""
    scale = float(INPUT_SIZE)
    ax, ay = anchors[:, 0], anchors[:, 1]
    cx = raw[..., 0] / scale + ax
    cy = raw[..., 1] / scale + ay
    w = raw[..., 2] / scale
    h = raw[..., 3] / scale
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    kp = raw[..., 4:16].reshape(*raw.shape[:2], 6, 2)
    keypoints = torch.stack([kp[..., 0] / scale + ax[:, None], kp[..., 1] / scale + ay[:, None]], dim=-1)
    scores = torch.sigmoid(logits.clamp(-SCORE_CLIP, SCORE_CLIP))
    valid = (scores >= min_score) & (w >= 0) & (h >= 0)
    return boxes, keypoints, torch.where(valid, scores, torch.zeros_like(scores))


def weighted_nms(
    boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, threshold: float = MIN_SUPPRESSION_IOU
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's WEIGHTED non-maximum suppression over one frame's candidates (float32, best score first): each
    round takes the best remaining detection and replaces its box and keypoints by the score-weighted mean of every
    remaining detection overlapping it by IoU > threshold (itself included); those are removed."""
    order = np.argsort(-scores, kind="stable")
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    remaining = np.arange(len(scores))
    out = []
    while len(remaining):
        top = boxes[remaining[0]]
        rest = boxes[remaining]
        iw = np.minimum(rest[:, 2], top[2]) - np.maximum(rest[:, 0], top[0])
        ih = np.minimum(rest[:, 3], top[3]) - np.maximum(rest[:, 1], top[1])
        inter = np.where((iw >= 0) & (ih >= 0), np.maximum(iw, 0) * np.maximum(ih, 0), np.float32(0))
        union = _area(rest) + _area(top) - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), np.float32(0))
        hit = iou > threshold
        members = remaining[hit]
        w = scores[members]
        total = np.float32(0)
        acc_box = np.zeros(4, np.float32)
        acc_kp = np.zeros(keypoints.shape[1:], np.float32)
        for m, s in zip(members, w):  # sequential float32 sums, in MediaPipe's order
            total += s
            acc_box += boxes[m] * s
            acc_kp += keypoints[m] * s
        if len(members):
            out.append((acc_box / total, acc_kp / total, float(scores[remaining[0]])))
        else:
            out.append((top.copy(), keypoints[remaining[0]].copy(), float(scores[remaining[0]])))
        if not hit.any():
            break
        remaining = remaining[~hit]
    return out


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def project(box_rel: np.ndarray, kp_rel: np.ndarray, lb: Letterbox) -> tuple[np.ndarray, np.ndarray]:
    """From the 128x128 tensor's normalised coordinates to the frame's (MediaPipe's projection matrix, float32)."""
    f32 = np.float32
    a, b = f32(lb.roi_w), f32(lb.roi_h)
    g, h = f32(1) / f32(lb.width), f32(1) / f32(lb.height)
    m0, m3 = a * g, (f32(-0.5) * a + f32(lb.roi_cx)) * g
    m5, m7 = b * h, (f32(-0.5) * b + f32(lb.roi_cy)) * h
    xs = np.array([box_rel[0], box_rel[2]], f32) * m0 + m3
    ys = np.array([box_rel[1], box_rel[3]], f32) * m5 + m7
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], f32)
    kp = np.stack([kp_rel[:, 0] * m0 + m3, kp_rel[:, 1] * m5 + m7], axis=1).astype(f32)
    return box, kp


def to_pixels(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """MediaPipe's relative -> pixel box: origin and size each truncated and clamped to [0, frame size]."""
    f32 = np.float32
    bw, bh = box[2] - box[0], box[3] - box[1]
    x = _bounded(f32(box[0]) * f32(width), width)
    y = _bounded(f32(box[1]) * f32(height), height)
    return x, y, x + _bounded(f32(bw) * f32(width), width), y + _bounded(f32(bh) * f32(height), height)


def _bounded(value: float, upper: int) -> int:
    """MediaPipe's BoundedValue<int>: C++'s int() (toward zero), then clamped to [0, upper]."""
    return min(max(int(value), 0), upper)


class BlazeFaceDetector:
    """MediaPipe Tasks FaceDetector (short-range model, default options) in torch, batched over frames.

    `detect_frames` takes uint8 RGB frames; the network runs on `device` in chunks of `batch_size` frames, the
    weighted NMS of each frame's few candidates on the CPU. The 128x128 letterbox is sampled where the frames are
    (ComfyUI's IMAGE is on the CPU), so only uint8 model inputs reach the device, never whole frames.
    """

    def __init__(
        self,
        path: str | Path,
        device: torch.device | str = "cpu",
        batch_size: int = 32,
        min_score: float = MIN_SCORE,
        min_suppression: float = MIN_SUPPRESSION_IOU,
    ) -> None:
        self.device = torch.device(device)
        self.net = load_network(path).to(self.device)
        self.anchors = ssd_anchors().to(self.device)
        self.batch_size = batch_size
        self.min_score = min_score
        self.min_suppression = min_suppression
        self._warps: dict[tuple[Letterbox, torch.device], Warp] = {}

    def _warp(self, lb: Letterbox, device: torch.device) -> Warp:
        if (lb, device) not in self._warps:
            if len(self._warps) > 512:
                self._warps.clear()
            self._warps[(lb, device)] = make_warp(lb, device)
        return self._warps[(lb, device)]

    def memory_required(self, frames: int) -> int:
        """Device bytes one batch of `frames` frames needs beyond the network's weights: the uint8 and float inputs,
        every activation (forward keeps them all), the outputs and their decoding."""
        pixels = INPUT_SIZE * INPUT_SIZE * 3
        outputs = NUM_ANCHORS * (16 + 1 + 4 + 12 + 1 + 1) * 4  # regressions, logits, boxes, keypoints, scores, mask
        return frames * (pixels + 4 * pixels + self.net.activation_bytes + outputs)

    @torch.inference_mode()
    def detect_frames(
        self,
        frames: torch.Tensor,
        regions: Sequence[Sequence[float] | None] | None = None,
        reserve: Callable[[int], None] | None = None,
    ) -> list[list[FaceDetection]]:
        """Faces in each frame of an RGB batch [F, H, W, 3] (uint8, or float 0..1), best score first. `regions`
        (optional, one per frame, None = whole frame): look only in that box (x0, y0, x1, y1) of the frame,
        letterboxed to a square as MediaPipe does for a region of interest; boxes still come back in frame pixels.
        `reserve(bytes)` is called before each batch runs on the device (ComfyUI frees that much memory)."""
        n, height, width = frames.shape[:3]
        out: list[list[FaceDetection]] = []
        for start in range(0, n, self.batch_size):
            chunk = frames[start : start + self.batch_size]
            lbs = [
                letterbox(width, height, None if regions is None else regions[start + i]) for i in range(chunk.shape[0])
            ]
            if len(set(lbs)) == 1:
                pixels = letterbox_pixels(chunk, self._warp(lbs[0], chunk.device))
            else:
                pixels = torch.cat(
                    [letterbox_pixels(chunk[i : i + 1], self._warp(lb, chunk.device)) for i, lb in enumerate(lbs)]
                )
            if reserve is not None:
                reserve(self.memory_required(chunk.shape[0]))
            with exact_float32():
                raw, logits = self.net(normalise(pixels.to(self.device)))
            boxes, keypoints, scores = decode(raw.float(), logits.float(), self.anchors, self.min_score)
            keep = scores > 0
            counts = keep.sum(1).tolist()
            sel_b, sel_k, sel_s = (t[keep].cpu().numpy() for t in (boxes, keypoints, scores))
            pos = 0
            for i, count in enumerate(counts):
                faces = []
                for box, kp, score in weighted_nms(
                    sel_b[pos : pos + count], sel_k[pos : pos + count], sel_s[pos : pos + count], self.min_suppression
                ):
                    pbox, pkp = project(box, kp, lbs[i])
                    faces.append(FaceDetection(box=to_pixels(pbox, width, height), score=score, keypoints=pkp))
                pos += count
                out.append(faces)
        return out


_CACHE: dict[tuple[str, str], BlazeFaceDetector] = {}


def get_detector(path: str | Path, device: torch.device | str = "cpu") -> BlazeFaceDetector:
    """One detector per (model file, device), read and checked once."""
    key = (str(Path(path).resolve()), str(torch.device(device)))
    if key not in _CACHE:
        _CACHE[key] = BlazeFaceDetector(path, device)
    return _CACHE[key]
