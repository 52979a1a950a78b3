"""Profiling helpers shared by both workers of `side_by_side.py` (the pack's, in that file, and the official's, in
`official_worker.py`): the same ranges and the same report on both sides. Standard library at import; torch is
imported where used, so importing this module does not move the workers' memory baselines."""

from __future__ import annotations

import contextlib
from pathlib import Path


def add(a: list[float], b: list[float]) -> list[float]:
    return [a[0] + b[0], a[1] + b[1]]


def add_ranges(module, label) -> None:
    """Profiler ranges around the submodules that `label(name, module)` names (None: no range), so a profile gives
    the time per site kind (motion cross-attention, temporal attention, ...), not only per op."""
    from torch.autograd.profiler import record_function

    for name, sub in module.named_modules():
        tag = label(name, sub)
        if tag is None:
            continue

        def pre(mod, args, tag=tag):
            mod._bench_range = record_function(tag)
            mod._bench_range.__enter__()

        def post(mod, args, output):
            mod._bench_range.__exit__(None, None, None)

        sub.register_forward_pre_hook(pre)
        sub.register_forward_hook(post)


@contextlib.contextmanager
def profiled(path):
    """torch.profiler over the block when `path` is given; writes the ranges and the top ops by self CPU time, and
    the copies and convolutions by input shape (where casts and off-mkldnn convolutions show)."""
    if not path:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        yield
    events = prof.key_averages()
    ranges = sorted((e for e in events if e.key.startswith("xnemo:")), key=lambda e: e.key)
    lines = ["ranges (CPU total ms, calls):"]
    lines += [f"  {e.key:<40} {e.cpu_time_total / 1e3:10.1f} {e.count:6d}" for e in ranges]
    lines.append(events.table(sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=40))
    watch = ("aten::_to_copy", "aten::copy_", "aten::_slow_conv2d_forward", "aten::clone", "aten::contiguous")
    shaped = [e for e in prof.key_averages(group_by_input_shape=True) if e.key in watch]
    shaped.sort(key=lambda e: -e.cpu_time_total)
    lines.append("casts, copies and slow convolutions by input shape (CPU total ms, calls, shapes):")
    lines += [
        f"  {e.key:<28} {e.cpu_time_total / 1e3:9.1f} {e.count:6d}  {str(e.input_shapes)[:150]}" for e in shaped[:20]
    ]
    for scope in ("xnemo:UNet call (all)", "xnemo:reference UNet"):
        lines += within(prof, scope)
    Path(path).write_text("\n".join(lines) + "\n")


def within(prof, scope: str, limit: int = 18) -> list[str]:
    """The ops under one range (self CPU time by op and input shapes): the step's own table, which the whole call's
    top ops mix with the motion encoder (3 calls on the official side, 2 on the pack's)."""
    totals: dict[tuple[str, str], list[float]] = {}
    for e in prof.events():
        parent = e.cpu_parent
        while parent is not None and parent.name != scope:
            parent = parent.cpu_parent
        if parent is None or e.name.startswith("xnemo:"):
            continue
        key = (e.name, str(e.input_shapes)[:110])
        row = totals.setdefault(key, [0.0, 0])
        row[0] += e.self_cpu_time_total
        row[1] += 1
    if not totals:
        return []
    by_op: dict[str, float] = {}
    for (name, _), (t, _) in totals.items():
        by_op[name] = by_op.get(name, 0.0) + t
    lines = [f"within {scope!r}: self CPU ms by op (all shapes), then the top ops by shape:"]
    lines += [f"  {n:<40} {t / 1e3:9.1f}" for n, t in sorted(by_op.items(), key=lambda kv: -kv[1])[:12]]
    top = sorted(totals.items(), key=lambda kv: -kv[1][0])[:limit]
    lines += [f"  {n:<28} {t / 1e3:9.1f} {c:6d}  {shapes}" for (n, shapes), (t, c) in top]
    return lines
