"""`vsr export`: ONNX (dynamic batch/H/W) in onnxruntime and TorchScript against torch; a
TensorRT export without torch-tensorrt is one Error line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from vsr.errors import OutputError
from vsr.export import ExportConfig, export_model
from vsr.models import load_model

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
SIZES = ((1, 3, 20, 30), (2, 3, 33, 17))


def reference(ckpt, x):
    return load_model(str(ckpt)).infer(x)


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_onnx_export_runs_in_onnxruntime_at_two_sizes(drn_checkpoint, tmp_path):
    from vsr.backends.onnx import import_onnxruntime

    ort = import_onnxruntime()
    out = tmp_path / "m.onnx"
    r = export_model(ExportConfig(model=str(drn_checkpoint), format="onnx", output=out,
                                  height=16, width=16))
    assert r.dynamic == ["batch", "height", "width"] and r.max_error <= 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in SIZES:  # neither is the traced 16x16
        x = torch.rand(shape, generator=torch.Generator().manual_seed(shape[2]))
        y = torch.from_numpy(session.run(None, {"lr": x.numpy()})[0])
        ref = reference(drn_checkpoint, x)
        assert y.shape == ref.shape == (shape[0], 3, 2 * shape[2], 2 * shape[3])
        assert (y - ref).abs().max() <= 1e-4


def test_torchscript_export_runs_at_two_sizes(drn_checkpoint, tmp_path):
    out = tmp_path / "m.pt"
    export_model(ExportConfig(model=str(drn_checkpoint), format="torchscript", output=out,
                              height=16, width=24))
    loaded = torch.jit.load(str(out))
    for shape in SIZES:
        x = torch.rand(shape)
        with torch.inference_mode():
            y = loaded(x)
        assert (y - reference(drn_checkpoint, x)).abs().max() <= 1e-4
    with pytest.raises(OutputError, match="exists"):
        export_model(ExportConfig(model=str(drn_checkpoint), format="torchscript", output=out))


@pytest.mark.skipif(importlib.util.find_spec("torch_tensorrt") is not None,
                    reason="torch-tensorrt is installed here")
def test_tensorrt_export_without_torch_tensorrt_is_one_error_line(drn_checkpoint, tmp_path):
    out = tmp_path / "m.ep"
    p = subprocess.run([sys.executable, "-m", "vsr", "export", "--format", "tensorrt",
                        "-m", str(drn_checkpoint), "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: TensorRT export needs torch-tensorrt")
    assert not out.exists() and not list(tmp_path.glob(".*"))


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_export_cli_json(drn_checkpoint, tmp_path):
    from click.testing import CliRunner

    from vsr.cli.export import export

    r = CliRunner().invoke(export, ["--format", "onnx", "-m", str(drn_checkpoint), "-o",
                                    str(tmp_path / "a.onnx"), "--height", "8", "--width", "8",
                                    "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["format"] == "onnx" and d["bytes"] > 0 and d["scale"] == 2


def test_an_artefact_whose_outputs_are_not_finite_is_not_written(tmp_path):
    """Finite but huge weights (3e38, which the loader's NaN check lets through) give NaN
    outputs, eager and exported alike: |NaN - NaN| is NaN, which passed the tolerance check,
    so the file was written and --json printed NaN, which is not JSON."""
    from vsr.models import DRN, CheckpointInfo, save_model

    torch.manual_seed(0)
    net = DRN(scale=2, n_feats=4, n_blocks=[1])
    with torch.no_grad():
        net.head.weight.fill_(3e38)
    ckpt = save_model(tmp_path / "huge.safetensors", net,
                      CheckpointInfo(arch="drn", hparams=net.hparams, scale=2, name="huge"))
    out = tmp_path / "m.pt"
    with pytest.raises(OutputError, match="differs from eager by nan"):
        export_model(ExportConfig(model=str(ckpt), format="torchscript", output=out,
                                  height=8, width=8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.safetensors"]


def test_a_traced_input_over_the_pixel_limit_is_refused_before_allocating(monkeypatch):
    """--height 100000 --width 100000 tried to allocate a 120 GB sample: an internal error
    (or the OOM killer). The traced input is held to the picture limit, VSR_MAX_PIXELS."""
    from vsr.errors import ConfigError

    with pytest.raises(ConfigError, match="over the limit of 50,000,000 pixels"):
        ExportConfig(model="drn-t-x2", format="torchscript", output="m.pt", height=100_000,
                     width=100_000)
    monkeypatch.setenv("VSR_MAX_PIXELS", "100")
    with pytest.raises(ConfigError, match="2x8x8"):
        ExportConfig(model="drn-t-x2", format="torchscript", output="m.pt", height=8, width=8,
                     batch=2)
    ExportConfig(model="drn-t-x2", format="torchscript", output="m.pt", height=10, width=10)


def _file_size_limit(limit: int):
    """For a subprocess: files over ``limit`` bytes cannot be written (EFBIG, as a full disk
    gives ENOSPC), the signal that would kill the writer ignored."""
    import resource
    import signal

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_write_that_fails_is_one_error_line_and_leaves_nothing(drn_checkpoint, tmp_path,
                                                                 fmt):
    """A write that fails part way (a full disk; here a file-size limit): ONNX was an
    'internal error: OSError', TorchScript aborted the process (SIGABRT in torch.jit.save,
    a C++ traceback) and left its partial file behind."""
    if fmt == "onnx" and not HAS_ORT:
        pytest.skip("onnxruntime not installed")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    name = "m.onnx" if fmt == "onnx" else "m.pt"
    p = subprocess.run([sys.executable, "-m", "vsr", "export", "--format", fmt, "-m",
                        str(drn_checkpoint), "-o", str(out_dir / name), "--height", "8",
                        "--width", "8"], capture_output=True, text=True, timeout=300,
                       preexec_fn=_file_size_limit(50_000))
    assert p.returncode == 1, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot write {out_dir / name}"), \
        p.stderr[-2000:]
    assert list(out_dir.iterdir()) == []
