"""Queue-time checks for the inputs a node's `validate_inputs` names.

ComfyUI (execution.validate_inputs, 0.3.75) runs its own min/max and dropdown checks on every widget input except the
ones `validate_inputs` names, and on none at all when it takes `**kwargs`. So each node names only the inputs it has
to see (together, or because ComfyUI cannot check them), and `check_named` redoes ComfyUI's checks for exactly those,
from the node's own schema, so nothing goes unchecked. Every other number keeps ComfyUI's own min/max check.

Dropdowns are named for a second reason: ComfyUI 0.3.75 compares a value with its options only for V1 (list-typed)
dropdowns, not for V3 `io.Combo` inputs like ours, so an unknown option would otherwise reach `execute`.
"""

from __future__ import annotations

from comfy_api.latest import io


def check_named(node: type[io.ComfyNode], **values) -> bool | str:
    """True, or a message for the first value outside its input's options or min/max. None = linked (unknown)."""
    inputs = {item.id: item for item in node.define_schema().inputs}
    for name, value in values.items():
        if value is None:
            continue  # a linked input: its value is not known before the graph runs
        item = inputs[name]
        if isinstance(item, io.Combo.Input):
            if value not in item.options:
                shown = ", ".join(map(str, item.options[:20])) + (", ..." if len(item.options) > 20 else "")
                return (
                    f"{name} is {value!r}, which is not one of: {shown or 'nothing (the list is empty)'}. Pick "
                    f"one from the list (a workflow saved with another version of the pack can name an option "
                    f"this version does not have)"
                )
            continue
        low, high = getattr(item, "min", None), getattr(item, "max", None)
        if low is not None and value < low:
            return f"{name} is {value}: the smallest allowed value is {low}"
        if high is not None and value > high:
            return f"{name} is {value}: the largest allowed value is {high}"
    return True
