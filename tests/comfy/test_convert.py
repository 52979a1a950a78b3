"""scripts/convert_to_safetensors.py on the tiny official-format fixture: same keys, dtypes and values; Load X-NeMo
gives the same model from the converted files; no overwriting without --force; unsafe or broken inputs refused."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from xnemo_pack.xnemo_core.adapters.checkpoint import load_state_dict_file
from xnemo_pack.xnemo_core.adapters.model import XNeMoFiles, load_xnemo
from xnemo_pack.xnemo_core.pure.constants import CHECKPOINT_FILES

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "convert_to_safetensors.py"


@pytest.fixture(scope="module")
def convert_script():
    spec = importlib.util.spec_from_file_location("convert_to_safetensors", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def converted(convert_script, fixture_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted")
    assert convert_script.main([str(fixture_dir), "--out", str(out)]) == 0
    return out


def files_in(folder: Path, suffix: str) -> XNeMoFiles:
    return XNeMoFiles(**{kind: str(folder / f"{name}{suffix}") for kind, name in CHECKPOINT_FILES.items()})


def test_converted_files_hold_the_same_tensors(converted, fixture_dir):
    assert sorted(p.name for p in converted.iterdir()) == sorted(f"{n}.safetensors" for n in CHECKPOINT_FILES.values())
    for name in CHECKPOINT_FILES.values():
        original = torch.load(str(fixture_dir / f"{name}.pth"), map_location="cpu", weights_only=True)
        back = load_state_dict_file(converted / f"{name}.safetensors")
        assert set(back) == set(original)
        for key, tensor in original.items():
            assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), f"{name}: {key}"


def test_load_xnemo_on_converted_files_gives_the_same_model(converted, fixture_dir):
    def tensors(files):
        model, bundle = load_xnemo(files, "fp32")
        parts = {
            "unet": model.model.diffusion_model,
            "sites": model.get_additional_models_with_key("xnemo")[0].model,
            "reference": bundle.reference.model,
            "motion": bundle.motion.model,
        }
        return {f"{part}.{k}": v for part, module in parts.items() for k, v in module.state_dict().items()}

    expected = tensors(files_in(fixture_dir, ".pth"))
    found = tensors(files_in(converted, ".safetensors"))
    assert set(found) == set(expected)
    for key, tensor in expected.items():
        assert found[key].dtype == tensor.dtype and torch.equal(found[key], tensor), key


def test_refuses_to_overwrite_without_force(convert_script, fixture_dir, tmp_path, capsys):
    source = fixture_dir / "xnemo_temporal_module.pth"
    target = tmp_path / "xnemo_temporal_module.safetensors"
    target.write_bytes(b"keep me")
    assert convert_script.main([str(source), "--out", str(tmp_path)]) == 1
    assert "--force" in capsys.readouterr().err
    assert target.read_bytes() == b"keep me"

    assert convert_script.main([str(source), "--out", str(tmp_path), "--force"]) == 0
    assert len(load_state_dict_file(target)) == 588
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no partial file left behind


def test_writes_beside_the_input_by_default(convert_script, fixture_dir, tmp_path):
    source = tmp_path / "xnemo_motion_encoder.pth"
    shutil.copy(fixture_dir / source.name, source)
    assert convert_script.main([str(source)]) == 0
    assert (tmp_path / "xnemo_motion_encoder.safetensors").is_file()


def test_refuses_pickled_code(convert_script, tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("this would run on load",))

    source = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "extra": Payload()}, source)
    assert convert_script.main([str(source)]) == 1
    assert "Refused to load evil.pth" in capsys.readouterr().err
    assert not (tmp_path / "evil.safetensors").exists()


def test_failed_verification_writes_nothing(convert_script, fixture_dir, tmp_path, monkeypatch, capsys):
    import safetensors.torch

    real_save = safetensors.torch.save_file

    def corrupting_save(tensors, filename, metadata=None):
        key = next(iter(tensors))
        real_save({**tensors, key: tensors[key] + 1}, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", corrupting_save)
    assert convert_script.main([str(fixture_dir / "xnemo_reference_unet.pth"), "--out", str(tmp_path)]) == 1
    assert "reads back differently" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["missing.pth", "notes.txt"])
def test_rejects_bad_inputs(convert_script, tmp_path, capsys, name):
    if name.endswith(".txt"):
        (tmp_path / name).write_text("x")
    assert convert_script.main([str(tmp_path / name)]) == 1
    assert capsys.readouterr().err.startswith("error: ")
