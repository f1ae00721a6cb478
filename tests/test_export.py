"""Export: every registered format for the tiny ProxylessNAS preset, verified; bad requests write nothing."""

from __future__ import annotations

from pathlib import Path

import onnxruntime
import pytest
import torch

from nas.arch import Arch
from nas.errors import NasError, UserError
from nas.export import OnnxExporter, export
from nas.registry import EXPORTERS
from nas.space import find_preset, space_of


@pytest.fixture(scope="module")
def arch() -> Arch:
    return find_preset("proxylessnas_tiny")


def test_registered_formats() -> None:
    assert EXPORTERS.names() == ["json", "onnx", "pt", "torchscript"]


def test_all_formats_written_and_verified(arch: Arch, tmp_path: Path) -> None:
    results = export(arch, EXPORTERS.names(), tmp_path / "out")
    stem = f"proxylessnas-{arch.short_hash}"
    names = {f: r.path.name for f, r in results.items()}
    assert names == {
        "json": f"{stem}.json",
        "onnx": f"{stem}.onnx",
        "pt": f"{stem}.pt",
        "torchscript": f"{stem}.torchscript.pt",
    }
    # Only the four files: no temp files or directories left behind.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names.values())
    assert results["json"].max_abs_diff == results["pt"].max_abs_diff == 0.0
    assert results["torchscript"].max_abs_diff <= 1e-5 and results["onnx"].max_abs_diff <= 1e-4

    assert Arch.from_json(results["json"].path.read_text()) == arch
    checkpoint = torch.load(results["pt"].path, weights_only=True)
    assert Arch.from_json(checkpoint["arch"]) == arch
    x = torch.randn(4, 3, 32, 32)
    model = space_of(arch).build(arch).eval()
    model.load_state_dict(checkpoint["state_dict"])
    with torch.inference_mode():
        expected = model(x)
        assert torch.allclose(torch.jit.load(results["torchscript"].path)(x), expected, atol=1e-5)
    session = onnxruntime.InferenceSession(str(results["onnx"].path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x.numpy()})  # batch 4: the batch axis is dynamic
    assert torch.allclose(torch.from_numpy(logits), expected, atol=1e-4)


def test_given_model_is_exported_and_left_untouched(arch: Arch, tmp_path: Path) -> None:
    torch.manual_seed(123)
    model = space_of(arch).build(arch).train()
    results = export(arch, ["pt", "pt"], tmp_path, model=model)
    assert list(results) == ["pt"] and model.training
    saved = torch.load(results["pt"].path, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_unknown_format_writes_nothing(arch: Arch, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown export format 'tflite'; known: json, onnx, pt, torchscript"):
        export(arch, ["json", "tflite"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unwritable_out_dir_is_user_error(arch: Arch, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match=f"--out {blocker / 'out'}: cannot write there"):
        export(arch, ["json"], blocker / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_failed_verification_is_nas_error_and_keeps_nothing(
    arch: Arch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(OnnxExporter, "tolerance", -1.0)
    with pytest.raises(NasError, match="differs from PyTorch") as err:
        export(arch, ["onnx"], tmp_path)
    assert not isinstance(err.value, UserError)
    assert list(tmp_path.iterdir()) == []


def test_checked_outputs_depend_on_the_input(arch: Arch) -> None:
    """Fresh batch-norm statistics would make every logit nearly constant and the export check blind."""
    from nas.export import _build

    model = _build(arch, seed=0)
    with torch.inference_mode():
        logits = model(torch.randn(4, 3, arch.config["resolution"], arch.config["resolution"]))
    assert float(logits.std(0).max()) > 0.05
    assert not model.training
