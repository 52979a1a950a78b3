"""Which ComfyUI cores the pack is tested on, and what it tells a user whose core is outside that range.

The registry keeps ComfyUI-Manager from installing the pack on a core older than the floor (`requires-comfyui` in
pyproject.toml); a manual install gets a warning in ComfyUI's log at start instead, and a core newer than the newest
tested one gets an info line, so a problem report can say whether the core was tested. CI runs the whole suite on the
newest and the ComfyUI tiers on the floor (`.ci/run`).
"""

from __future__ import annotations

import logging
import re

FLOOR = "0.3.75"  # the oldest core CI runs (the `requires-comfyui` floor)
NEWEST_TESTED = "0.30.0"  # the newest core CI runs (the default of scripts/setup.sh)


def parse(version: str) -> tuple[int, ...] | None:
    """'0.30.0' -> (0, 30, 0); None when the string does not start with a dotted version."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version or "")
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


def core_version_message(version: str) -> tuple[int, str]:
    """(logging level, message) about running on ComfyUI `version`."""
    found, floor, newest = parse(version), parse(FLOOR), parse(NEWEST_TESTED)
    if found is None:
        return logging.WARNING, (
            f"X-NeMo: cannot read ComfyUI's version ({version!r}); the pack is tested on ComfyUI {FLOOR} to "
            f"{NEWEST_TESTED}"
        )
    if found < floor:
        return logging.WARNING, (
            f"X-NeMo: ComfyUI {version} is older than {FLOOR}, the oldest core this pack supports: its nodes may "
            f"fail. Update ComfyUI (git pull, or ComfyUI-Manager's Update ComfyUI)"
        )
    if found > newest:
        return logging.INFO, (
            f"X-NeMo: ComfyUI {version} is newer than {NEWEST_TESTED}, the newest core this pack was tested on "
            f"(the floor is {FLOOR}); if something breaks, say your ComfyUI version in the report"
        )
    return logging.INFO, f"X-NeMo: ComfyUI {version} (tested range {FLOOR} to {NEWEST_TESTED})"


def log_core_version() -> None:
    try:
        import comfyui_version

        version = str(comfyui_version.__version__)
    except (ImportError, AttributeError):
        version = "unknown"
    level, message = core_version_message(version)
    logging.log(level, message)
