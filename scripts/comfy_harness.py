"""Start a real ComfyUI with this pack loaded, and talk to it over HTTP.

One module for everything that drives a live server: the pytest fixtures in `tests/server/conftest.py` and
`scripts/demo.py` both use it, so the tests exercise exactly the path the demo takes.

- `start_server()` launches `main.py` on a free 127.0.0.1 port with the pack loaded as custom node `xnemo` (through an
  `--extra-model-paths-config` yaml, as ComfyUI's own execution tests load their testing pack), every writable folder
  under one work directory, and model folders (`x-nemo`, `clip_vision`, `vae`, ...) that the caller can fill.
  It returns once `/object_info` answers, or raises with the server log's tail.
- `ComfyClient` wraps the HTTP API: `/object_info`, `POST /prompt`, `/history` (waits with a deadline and raises
  `ExecutionFailed` with ComfyUI's `execution_error` message), `/view`, `/interrupt`, `/free`, `/upload/image`.

Standard library only (plus whatever interpreter runs ComfyUI), so it can be imported before anything is installed.
"""

from __future__ import annotations

import importlib.util
import json
import mimetypes
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "xnemo"  # the custom-node folder name ComfyUI sees
PACK_PYTHON_MODULE = f"custom_nodes.{PACK_NAME}"
DEFAULT_MODEL_FOLDERS = ("x-nemo", "clip_vision", "vae")
IMPORT_FAILURE_MARKERS = ("IMPORT FAILED", "Cannot import", "Error while calling comfy_entrypoint")


class HarnessError(RuntimeError):
    """The server could not be prepared, started or reached."""


class PromptRejected(RuntimeError):
    """`POST /prompt` answered 400: the graph failed validation. `.body` holds ComfyUI's answer."""

    def __init__(self, body: Any):
        self.body = body
        super().__init__(f"prompt rejected by ComfyUI: {_describe_rejection(body)}")


class ExecutionFailed(RuntimeError):
    """The prompt ran and failed (or was interrupted). `.entry` is its `/history` record."""

    def __init__(self, message: str, entry: Mapping[str, Any], node_type: str | None = None):
        self.entry = entry
        self.node_type = node_type
        super().__init__(message)


# ----------------------------------------------------------------------------------------------------------------------
# Locating things


def comfyui_dir() -> Path:
    """The ComfyUI checkout to run: $COMFYUI_DIR when set, else `.comfyui/` made by `scripts/setup.sh`."""
    path = Path(os.environ.get("COMFYUI_DIR") or ROOT / ".comfyui").expanduser().resolve()
    if not (path / "main.py").is_file():
        raise HarnessError(
            f"no ComfyUI found at {path} (main.py missing): run `bash scripts/setup.sh`, "
            "or set COMFYUI_DIR to an existing ComfyUI folder"
        )
    return path


def comfyui_version(comfy_dir: Path | None = None) -> str:
    """The `__version__` in the ComfyUI folder's comfyui_version.py ("unknown" when absent)."""
    path = (comfy_dir or comfyui_dir()) / "comfyui_version.py"
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    except OSError:
        pass
    return "unknown"


@dataclass
class PinnedFrontend:
    """The frontend a ComfyUI folder pins in its requirements.txt, and where it is served from."""

    version: str
    static_root: Path | None  # None: the venv's comfyui-frontend-package, which ComfyUI serves by default


def pinned_frontend(comfy_dir: Path | None = None) -> PinnedFrontend:
    """The frontend this ComfyUI pins. One venv serves both cores (it holds the newest core's pin); for a core that
    pins another version, `scripts/setup.sh` unpacks that one into `.tools/frontend-<version>/`, served with
    `--front-end-root`, so each core is tested with the frontend it ships with."""
    import importlib.metadata

    comfy_dir = comfy_dir or comfyui_dir()
    installed = importlib.metadata.version("comfyui-frontend-package")
    wanted = installed
    try:
        for line in (comfy_dir / "requirements.txt").read_text(encoding="utf-8").splitlines():
            if line.strip().startswith("comfyui-frontend-package=="):
                wanted = line.split("==", 1)[1].split(";")[0].strip()
    except OSError:
        pass
    if wanted == installed:
        return PinnedFrontend(installed, None)
    static = ROOT / ".tools" / f"frontend-{wanted}" / "comfyui_frontend_package" / "static"
    if not (static / "index.html").is_file():
        raise HarnessError(
            f"ComfyUI {comfyui_version(comfy_dir)} pins comfyui-frontend-package {wanted} but the venv has "
            f"{installed} and {static} is missing: run `bash scripts/setup.sh` (it unpacks the floor's frontend)"
        )
    return PinnedFrontend(wanted, static)


def import_pack(name: str = "xnemo_pack"):
    """Import this repository as a package (it is one, as ComfyUI loads it) so `xnemo_core` can be used in-process."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------------------------------------------------
# Server


@dataclass
class ComfyServer:
    """A running ComfyUI. Stop it with `stop()` (or use it as a context manager)."""

    process: subprocess.Popen
    port: int
    work_dir: Path
    log_path: Path
    model_dirs: dict[str, Path]
    input_dir: Path
    output_dir: Path
    temp_dir: Path
    _log_file: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 60.0) -> ComfyClient:
        return ComfyClient(self.url, timeout=timeout)

    def log_text(self) -> str:
        if self._log_file is not None:
            self._log_file.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def import_failures(self) -> list[str]:
        """Log lines that say this pack failed to import (core's own optional nodes, e.g. audio, are not ours)."""
        ours = f"custom_nodes/{PACK_NAME}"
        return [
            line
            for line in self.log_text().splitlines()
            if ours in line and any(marker in line for marker in IMPORT_FAILURE_MARKERS)
        ]

    def stop(self, grace: float = 15.0) -> None:
        """Terminate, wait, then kill if it is still there."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=grace)
        if self._log_file is not None and not self._log_file.closed:
            self._log_file.close()

    def __enter__(self) -> ComfyServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _supported_flags(comfy_dir: Path) -> str:
    try:
        return (comfy_dir / "comfy" / "cli_args.py").read_text(encoding="utf-8")
    except OSError:
        return ""


def write_extra_paths_yaml(path: Path, custom_nodes_dir: Path, model_dirs: Mapping[str, Path]) -> None:
    """The yaml that loads the pack and adds our model folders (absolute paths, JSON-quoted: valid YAML)."""
    lines = ["xnemo_harness:", f"    custom_nodes: {json.dumps(str(custom_nodes_dir))}"]
    lines += [f"    {json.dumps(name)}: {json.dumps(str(folder))}" for name, folder in model_dirs.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def start_server(
    work_dir: Path,
    *,
    model_folders: Iterable[str] = DEFAULT_MODEL_FOLDERS,
    cpu: bool = True,
    python: str | None = None,
    comfy_dir: Path | None = None,
    extra_args: Iterable[str] = (),
    startup_timeout: float = 240.0,
    env: Mapping[str, str] | None = None,
) -> ComfyServer:
    """Start ComfyUI with this pack as custom node `xnemo`; return once `/object_info` answers.

    Everything the server writes (input, output, temp, user, log, model folders) goes under `work_dir`.
    `model_dirs[name]` is `work_dir/models/<name>`, registered for ComfyUI's folder `name`: put files there and they
    show up in the loaders' combo lists (ComfyUI re-reads folders when their modification time changes).
    """
    comfy_dir = comfy_dir or comfyui_dir()
    extra_args = list(extra_args)
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)

    custom_nodes = work_dir / "custom_nodes"
    custom_nodes.mkdir(exist_ok=True)
    link = custom_nodes / PACK_NAME
    if not link.is_symlink():
        link.symlink_to(ROOT, target_is_directory=True)

    model_dirs = {name: work_dir / "models" / name for name in model_folders}
    for folder in model_dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    dirs = {name: work_dir / name for name in ("input", "output", "temp", "user")}
    for folder in dirs.values():
        folder.mkdir(exist_ok=True)
    yaml_path = work_dir / "extra_model_paths.yaml"
    write_extra_paths_yaml(yaml_path, custom_nodes, model_dirs)

    port = free_port()
    cmd = [
        python or sys.executable,
        "main.py",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-auto-launch",
        "--extra-model-paths-config",
        str(yaml_path),
        "--output-directory",
        str(dirs["output"]),
        "--input-directory",
        str(dirs["input"]),
        "--temp-directory",
        str(dirs["temp"]),
        "--user-directory",
        str(dirs["user"]),
        # Only our pack: a user's COMFYUI_DIR may hold other custom nodes that would slow or break the run.
        "--disable-all-custom-nodes",
        "--whitelist-custom-nodes",
        PACK_NAME,
    ]
    flags = _supported_flags(comfy_dir)
    if "--front-end-root" not in extra_args:  # the frontend this core pins, as its users get it
        pinned = pinned_frontend(comfy_dir)
        if pinned.static_root is not None:
            cmd += ["--front-end-root", str(pinned.static_root)]
    if "--database-url" in flags:
        cmd += ["--database-url", "sqlite:///:memory:"]
    if cpu:
        cmd.append("--cpu")
    cmd += list(extra_args)

    log_path = work_dir / "comfyui.log"
    log_file = open(log_path, "w", encoding="utf-8")
    log_file.write("$ " + " ".join(cmd) + "\n")
    log_file.flush()
    proc_env = dict(os.environ if env is None else env)
    proc_env.setdefault("PYTHONUNBUFFERED", "1")
    process = subprocess.Popen(
        cmd, cwd=comfy_dir, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=proc_env
    )
    server = ComfyServer(
        process=process,
        port=port,
        work_dir=work_dir,
        log_path=log_path,
        model_dirs=model_dirs,
        input_dir=dirs["input"],
        output_dir=dirs["output"],
        temp_dir=dirs["temp"],
        _log_file=log_file,
    )
    try:
        _wait_until_ready(server, startup_timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_until_ready(server: ComfyServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    client = ComfyClient(server.url, timeout=5.0)
    delay = 0.05
    while True:
        code = server.process.poll()
        if code is not None:
            raise HarnessError(f"ComfyUI exited with code {code} before serving; log tail:\n{server.log_tail()}")
        try:
            client.get_json("/object_info")
            return
        except (OSError, urllib.error.URLError, HarnessError):
            pass
        if time.monotonic() > deadline:
            raise HarnessError(
                f"ComfyUI did not answer /object_info within {timeout:.0f}s; log tail:\n{server.log_tail()}"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


# ----------------------------------------------------------------------------------------------------------------------
# Client


class ComfyClient:
    """Minimal HTTP client for ComfyUI's API (stdlib only)."""

    def __init__(self, base_url: str, timeout: float = 60.0, client_id: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.client_id = client_id or uuid.uuid4().hex

    # -- plumbing
    def _request(self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None):
        req = urllib.request.Request(self.base_url + path, data=body, method=method, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def get_json(self, path: str) -> Any:
        status, data = self._request("GET", path)
        if status != 200:
            raise HarnessError(f"GET {path} -> HTTP {status}: {data[:500]!r}")
        return json.loads(data)

    def post_json(self, path: str, payload: Any) -> tuple[int, bytes]:
        return self._request("POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    # -- API
    def object_info(self, node_class: str | None = None) -> dict:
        if node_class is None:
            return self.get_json("/object_info")
        return self.get_json(f"/object_info/{urllib.parse.quote(node_class)}").get(node_class, {})

    def queue_prompt(self, prompt: Mapping[str, Any], extra_data: Mapping[str, Any] | None = None) -> str:
        """POST /prompt; returns the prompt id or raises PromptRejected with ComfyUI's node errors."""
        payload: dict[str, Any] = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            payload["extra_data"] = dict(extra_data)
        status, data = self.post_json("/prompt", payload)
        try:
            body = json.loads(data)
        except ValueError:
            body = data.decode(errors="replace")
        if status != 200:
            raise PromptRejected(body)
        return body["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        """The finished prompt's `/history` entry, or None while it is queued or running."""
        return self.get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)

    def wait_for(self, prompt_id: str, timeout: float = 300.0, poll: float = 0.1) -> dict:
        """Wait until the prompt finishes; return its history entry, or raise ExecutionFailed / TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                _raise_if_failed(entry)
                return entry
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f}s")
            time.sleep(poll)

    def run(self, prompt: Mapping[str, Any], timeout: float = 300.0) -> dict:
        """Queue a prompt and wait for it: returns the history entry (with `outputs`)."""
        return self.wait_for(self.queue_prompt(prompt), timeout=timeout)

    def view(self, filename: str, subfolder: str = "", folder_type: str = "output") -> bytes:
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
        status, data = self._request("GET", f"/view?{query}")
        if status != 200:
            raise HarnessError(f"GET /view {filename!r} ({folder_type}/{subfolder}) -> HTTP {status}")
        return data

    def interrupt(self, prompt_id: str | None = None) -> None:
        status, data = self.post_json("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})
        if status != 200:
            raise HarnessError(f"POST /interrupt -> HTTP {status}: {data[:300]!r}")

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        status, data = self.post_json("/free", {"unload_models": unload_models, "free_memory": free_memory})
        if status != 200:
            raise HarnessError(f"POST /free -> HTTP {status}: {data[:300]!r}")

    def upload_image(
        self,
        path: Path,
        name: str | None = None,
        subfolder: str = "",
        overwrite: bool = True,
        folder_type: str = "input",
    ) -> str:
        """Upload a file (images and videos alike) into the server's input folder; returns the name to use in graphs."""
        path = Path(path)
        fields = {"overwrite": "true" if overwrite else "false", "subfolder": subfolder, "type": folder_type}
        body, content_type = _multipart(fields, "image", name or path.name, path.read_bytes())
        status, data = self._request("POST", "/upload/image", body, {"Content-Type": content_type})
        if status != 200:
            raise HarnessError(f"POST /upload/image {path.name} -> HTTP {status}: {data[:300]!r}")
        answer = json.loads(data)
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    def output_files(self, entry: Mapping[str, Any]) -> list[dict]:
        """Every file a finished prompt reported in its UI outputs: dicts with filename, subfolder, type, node."""
        files = []
        for node_id, ui in entry.get("outputs", {}).items():
            for key, values in ui.items():
                if not isinstance(values, list):
                    continue
                for item in values:
                    if isinstance(item, dict) and "filename" in item:
                        files.append({**item, "node": node_id, "key": key})
        return files


def _raise_if_failed(entry: Mapping[str, Any]) -> None:
    status = entry.get("status", {})
    if status.get("status_str") == "success":
        return
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            message = (
                f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                f"{data.get('exception_type')}: {data.get('exception_message')}"
            )
            raise ExecutionFailed(message, entry, node_type=data.get("node_type"))
        if kind == "execution_interrupted":
            raise ExecutionFailed(
                f"interrupted at node {data.get('node_id')} ({data.get('node_type')})",
                entry,
                node_type=data.get("node_type"),
            )
    raise ExecutionFailed(f"prompt finished with status {status.get('status_str')!r}", entry)


def _describe_rejection(body: Any) -> str:
    if not isinstance(body, dict):
        return str(body)[:1000]
    parts = [str(body.get("error", {}).get("message", body.get("error")))]
    for node_id, info in (body.get("node_errors") or {}).items():
        for err in info.get("errors", []):
            parts.append(f"node {node_id} ({info.get('class_type')}): {err.get('message')}: {err.get('details')}")
    return "; ".join(parts)


def _multipart(fields: Mapping[str, str], file_field: str, filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    mime = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    chunks = []
    for key, value in fields.items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    chunks.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
        f"Content-Type: {mime}\r\n\r\n".encode()
    )
    chunks += [content, f"\r\n--{boundary}--\r\n".encode()]
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


# ----------------------------------------------------------------------------------------------------------------------
# Graph helpers


def node_ids_of(prompt: Mapping[str, Any], class_type: str) -> list[str]:
    """Ids of the API-graph nodes of one class, in id order."""
    return sorted((k for k, v in prompt.items() if v.get("class_type") == class_type), key=_id_key)


def _id_key(node_id: str):
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)
