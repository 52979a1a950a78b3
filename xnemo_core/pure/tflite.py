"""A small reader for TensorFlow Lite model files (FlatBuffers, schema "TFL3"): tensors, operators and their buffers.

Only what a pure-torch re-implementation of a small float model needs: the main subgraph's tensors (shape, type,
name, constant data), its operators in execution order (builtin code and the options of the few ops such models
use), and the model's metadata entries. No tflite, TensorFlow or flatbuffers package is involved: a FlatBuffer is
a little-endian tree of tables, each with a vtable of field offsets, and the handful of tables needed here are read
field by field (field numbers from TensorFlow Lite's schema.fbs).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

# TensorType -> numpy dtype (schema.fbs enum TensorType).
TENSOR_TYPES = {
    0: np.float32,
    1: np.float16,
    2: np.int32,
    3: np.uint8,
    4: np.int64,
    6: np.bool_,
    7: np.int16,
    9: np.int8,
}

# BuiltinOperator codes used by small vision models (schema.fbs enum BuiltinOperator).
BUILTIN_NAMES = {
    0: "ADD",
    1: "AVERAGE_POOL_2D",
    2: "CONCATENATION",
    3: "CONV_2D",
    4: "DEPTHWISE_CONV_2D",
    6: "DEQUANTIZE",
    9: "FULLY_CONNECTED",
    14: "LOGISTIC",
    17: "MAX_POOL_2D",
    18: "MUL",
    19: "RELU",
    21: "RELU6",
    22: "RESHAPE",
    25: "SOFTMAX",
    34: "PAD",
    39: "TRANSPOSE",
    54: "PRELU",
    60: "PADV2",
    32: "CUSTOM",
}

# Per builtin option table: field names in schema order (union BuiltinOptions member index -> table layout).
_OPTION_FIELDS = {
    1: (
        "Conv2DOptions",
        (
            ("padding", "b"),
            ("stride_w", "i"),
            ("stride_h", "i"),
            ("fused_activation_function", "b"),
            ("dilation_w_factor", "i", 1),
            ("dilation_h_factor", "i", 1),
        ),
    ),
    2: (
        "DepthwiseConv2DOptions",
        (
            ("padding", "b"),
            ("stride_w", "i"),
            ("stride_h", "i"),
            ("depth_multiplier", "i"),
            ("fused_activation_function", "b"),
            ("dilation_w_factor", "i", 1),
            ("dilation_h_factor", "i", 1),
        ),
    ),
    5: (
        "Pool2DOptions",
        (
            ("padding", "b"),
            ("stride_w", "i"),
            ("stride_h", "i"),
            ("filter_width", "i"),
            ("filter_height", "i"),
            ("fused_activation_function", "b"),
        ),
    ),
    10: ("ConcatenationOptions", (("axis", "i"), ("fused_activation_function", "b"))),
    11: ("AddOptions", (("fused_activation_function", "b"),)),
    17: ("ReshapeOptions", ()),  # new_shape is a vector; the shape tensor/output shape say the same
    22: ("PadOptions", ()),
}


class TFLiteFormatError(ValueError):
    """The bytes are not a TensorFlow Lite model this reader understands."""


class _Table:
    """One FlatBuffer table: `pos` is where it starts; fields are looked up through its vtable."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        vtable = pos - _i32(buf, pos)
        _check(buf, vtable, 4)
        self._vsize = _u16(buf, vtable)
        self._vtable = vtable

    def _field(self, index: int) -> int:
        """Byte position of field `index`, or 0 when the field is absent (it then has its default)."""
        slot = 4 + 2 * index
        if slot >= self._vsize:
            return 0
        off = _u16(self.buf, self._vtable + slot)
        return self.pos + off if off else 0

    def scalar(self, index: int, fmt: str, default=0):
        p = self._field(index)
        if not p:
            return default
        _check(self.buf, p, struct.calcsize(fmt))
        return struct.unpack_from("<" + fmt, self.buf, p)[0]

    def _target(self, index: int) -> int:
        p = self._field(index)
        if not p:
            return 0
        target = p + _u32(self.buf, p)
        _check(self.buf, target, 4)
        return target

    def table(self, index: int) -> _Table | None:
        target = self._target(index)
        return _Table(self.buf, target) if target else None

    def string(self, index: int) -> str:
        target = self._target(index)
        if not target:
            return ""
        n = _u32(self.buf, target)
        _check(self.buf, target + 4, n)
        return self.buf[target + 4 : target + 4 + n].decode("utf-8", "replace")

    def vector(self, index: int, fmt: str) -> tuple:
        """Vector of scalars (struct format character)."""
        target = self._target(index)
        if not target:
            return ()
        n = _u32(self.buf, target)
        _check(self.buf, target + 4, n * struct.calcsize(fmt))
        return struct.unpack_from(f"<{n}{fmt}", self.buf, target + 4)

    def bytes_vector(self, index: int) -> memoryview:
        target = self._target(index)
        if not target:
            return memoryview(b"")
        n = _u32(self.buf, target)
        _check(self.buf, target + 4, n)
        return memoryview(self.buf)[target + 4 : target + 4 + n]

    def tables(self, index: int) -> list[_Table]:
        """Vector of tables: each element is an offset relative to its own position."""
        target = self._target(index)
        if not target:
            return []
        n = _u32(self.buf, target)
        _check(self.buf, target + 4, 4 * n)
        out = []
        for k in range(n):
            p = target + 4 + 4 * k
            out.append(_Table(self.buf, p + _u32(self.buf, p)))
        return out


def _u16(buf: bytes, pos: int) -> int:
    _check(buf, pos, 2)
    return struct.unpack_from("<H", buf, pos)[0]


def _u32(buf: bytes, pos: int) -> int:
    _check(buf, pos, 4)
    return struct.unpack_from("<I", buf, pos)[0]


def _i32(buf: bytes, pos: int) -> int:
    _check(buf, pos, 4)
    return struct.unpack_from("<i", buf, pos)[0]


def _check(buf: bytes, pos: int, size: int) -> None:
    if pos < 0 or pos + size > len(buf):
        raise TFLiteFormatError(f"offset {pos}+{size} lies outside the {len(buf)}-byte file (truncated or corrupt)")


@dataclass(frozen=True, kw_only=True)
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: type
    data: np.ndarray | None  # constant tensors only
    quantization: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Operator:
    op: str  # builtin name, e.g. "CONV_2D"
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict


@dataclass(frozen=True, kw_only=True)
class Model:
    version: int
    description: str
    tensors: list[Tensor]
    operators: list[Operator]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    metadata: dict[str, bytes]


def read_model(data: bytes) -> Model:
    """Parse a .tflite file's bytes (main subgraph only)."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise TFLiteFormatError("not a TensorFlow Lite model (file identifier 'TFL3' missing)")
    model = _Table(data, _u32(data, 0))
    codes = []
    for code in model.tables(1):  # OperatorCode: deprecated_builtin_code:byte (0), custom_code (1), builtin_code (3)
        builtin = max(code.scalar(0, "b", 0), code.scalar(3, "i", 0))
        codes.append(BUILTIN_NAMES.get(builtin, f"BUILTIN_{builtin}") if builtin != 32 else "CUSTOM:" + code.string(1))
    buffers = model.tables(4)
    subgraphs = model.tables(2)
    if not subgraphs:
        raise TFLiteFormatError("the model has no subgraph")
    graph = subgraphs[0]

    tensors = []
    for i, t in enumerate(graph.tables(0)):  # Tensor: shape (0), type (1), buffer (2), name (3), quantization (4)
        type_code = t.scalar(1, "b", 0)
        if type_code not in TENSOR_TYPES:
            raise TFLiteFormatError(f"tensor {i} has unsupported type code {type_code}")
        dtype = TENSOR_TYPES[type_code]
        shape = tuple(t.vector(0, "i"))
        array = None
        buffer_index = t.scalar(2, "I", 0)
        if buffer_index:
            if buffer_index >= len(buffers):
                raise TFLiteFormatError(f"tensor {i} points at buffer {buffer_index} of {len(buffers)}")
            raw = _buffer_bytes(data, buffers[buffer_index])
            if len(raw):
                count = int(np.prod(shape)) if shape else 1
                if len(raw) != count * np.dtype(dtype).itemsize:
                    raise TFLiteFormatError(
                        f"tensor {i} ({t.string(3)}): buffer has {len(raw)} bytes, shape "
                        f"{shape} of {np.dtype(dtype).name} needs {count * np.dtype(dtype).itemsize}"
                    )
                array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"), count=count).reshape(shape)
        quant = {}
        q = t.table(4)
        if q is not None:
            scale, zero = q.vector(2, "f"), q.vector(3, "q")
            if scale:
                quant = {"scale": scale, "zero_point": zero, "axis": q.scalar(6, "i", 0)}
        tensors.append(Tensor(index=i, name=t.string(3), shape=shape, dtype=dtype, data=array, quantization=quant))

    operators = []
    for o in graph.tables(3):  # Operator: opcode_index (0), inputs (1), outputs (2), options type (3), options (4)
        index = o.scalar(0, "I", 0)
        if index >= len(codes):
            raise TFLiteFormatError(f"operator code {index} of {len(codes)}")
        options = {}
        kind = o.scalar(3, "B", 0)
        table = o.table(4)
        if kind in _OPTION_FIELDS and table is not None:
            for k, spec in enumerate(_OPTION_FIELDS[kind][1]):
                options[spec[0]] = table.scalar(k, spec[1], spec[2] if len(spec) > 2 else 0)
        operators.append(
            Operator(op=codes[index], inputs=tuple(o.vector(1, "i")), outputs=tuple(o.vector(2, "i")), options=options)
        )

    metadata = {}
    for m in model.tables(6):  # Metadata: name (0), buffer (1)
        b = m.scalar(1, "I", 0)
        if b < len(buffers):
            metadata[m.string(0)] = bytes(_buffer_bytes(data, buffers[b]))
    return Model(
        version=model.scalar(0, "I", 0),
        description=model.string(3),
        tensors=tensors,
        operators=operators,
        inputs=tuple(graph.vector(1, "i")),
        outputs=tuple(graph.vector(2, "i")),
        metadata=metadata,
    )


def _buffer_bytes(data: bytes, buffer: _Table) -> memoryview:
    """Buffer: data (0), or offset (1) + size (2) into the file for models stored outside the FlatBuffer."""
    offset, size = buffer.scalar(1, "Q", 0), buffer.scalar(2, "Q", 0)
    if offset > 1:
        _check(data, offset, size)
        return memoryview(data)[offset : offset + size]
    return buffer.bytes_vector(0)


def input_normalization(model: Model) -> tuple[float, float] | None:
    """(mean, std) of the first input from the model's TFLite metadata (NormalizationOptions), if it has any.

    The metadata is a second FlatBuffer (metadata_schema.fbs): ModelMetadata.subgraph_metadata (3)
    -> SubGraphMetadata.input_tensor_metadata (2) -> TensorMetadata.process_units (4) -> ProcessUnit
    options (type 0, table 1; type 1 = NormalizationOptions: mean (0), std (1)).
    """
    data = model.metadata.get("TFLITE_METADATA")
    if not data:
        return None
    root = _Table(data, _u32(data, 0))
    for graph in root.tables(3):
        for tensor in graph.tables(2)[:1]:
            for unit in tensor.tables(4):
                options = unit.table(1)
                if unit.scalar(0, "B", 0) == 1 and options is not None:
                    mean, std = options.vector(0, "f"), options.vector(1, "f")
                    if mean and std:
                        return float(mean[0]), float(std[0])
    return None
