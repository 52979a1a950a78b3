"""requirements.txt never breaks an existing OpenCV: installed into an environment that has opencv-contrib-python,
it adds no second OpenCV build, and `import cv2` (with the contrib modules) still works afterwards.

The throwaway venv sees this venv's packages except every OpenCV one (a folder of links, through a .pth file), so
pip finds torch, safetensors, ... already satisfied and nothing is downloaded: the contrib wheel comes from
.tools/wheels/ (scripts/setup.sh puts it there) and pip runs with --no-index. A requirement on any OpenCV package
would therefore fail here instead of installing a second build.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".tools" / "wheels"
OPENCV_NAMES = ("cv2", "opencv")


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, check=False, **kw)


def test_requirements_keep_an_installed_opencv_contrib(tmp_path):
    wheels = sorted(WHEELS.glob("opencv_contrib_python-4.*.whl"))
    if not wheels:
        pytest.fail(f"no opencv-contrib-python wheel in {WHEELS}: run `bash scripts/setup.sh` (it downloads one)")
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", "--without-pip", venv).returncode == 0
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    shared = tmp_path / "shared-site"  # this venv's packages minus every OpenCV build
    shared.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(OPENCV_NAMES):
            (shared / entry.name).symlink_to(entry)
    (site / "zz_shared_packages.pth").write_text(f"{shared}\n")

    pip = [sys.executable, "-m", "pip", "--python", python, "--disable-pip-version-check", "install", "--no-index"]
    contrib = run(*pip, "--no-deps", wheels[-1])
    assert contrib.returncode == 0, contrib.stderr
    reqs = run(*pip, "-r", ROOT / "requirements.txt")
    assert reqs.returncode == 0, f"installing requirements.txt would need a download:\n{reqs.stdout}\n{reqs.stderr}"

    check = run(
        python,
        "-c",
        """
import importlib.metadata as md, json, cv2
cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
print(json.dumps({"builds": sorted(d.metadata["Name"] for d in md.distributions()
                                   if d.metadata["Name"].lower().startswith("opencv")),
                  "version": cv2.__version__, "contrib": hasattr(cv2, "ximgproc"), "cascade": not cascade.empty(),
                  "file": cv2.__file__}))
""",
    )
    assert check.returncode == 0, check.stderr
    found = json.loads(check.stdout)
    assert found["builds"] == ["opencv-contrib-python"], found
    assert found["version"].startswith("4.") and found["contrib"] and found["cascade"], found
    assert found["file"].startswith(str(venv)), found  # the contrib build's cv2, not this venv's own
