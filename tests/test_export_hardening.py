"""`vsr export` and the engine cache under a demanding user: what --json says is what the file
is, a cached engine that computes something else is rebuilt, bad paths and options are one
Error line with nothing left behind."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")


@needs_ort
def test_onnx_export_json_says_what_the_file_takes(drn_checkpoint, tmp_path, monkeypatch):
    """`vsr export --format onnx --height 8 --width 12 --batch 2 --json` said "shape":
    [2, 3, 8, 12] while the file was traced on 1x3x32x32 (the options were ignored) and takes
    any batch, height and width: the JSON described neither the trace nor the file."""
    from click.testing import CliRunner

    from vsr.backends.onnx import import_onnxruntime
    from vsr.cli.export import export

    traced = []
    real = torch.onnx.export

    def spy(model, args, *rest, **kw):
        traced.append(list(args[0].shape))
        return real(model, args, *rest, **kw)

    monkeypatch.setattr(torch.onnx, "export", spy)
    out = tmp_path / "a.onnx"
    r = CliRunner().invoke(export, ["--format", "onnx", "-m", str(drn_checkpoint), "-o",
                                    str(out), "--height", "8", "--width", "12", "--batch", "2",
                                    "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    session = import_onnxruntime().InferenceSession(str(out),
                                                    providers=["CPUExecutionProvider"])
    (lr,), (sr,) = session.get_inputs(), session.get_outputs()
    assert d["shape"] == list(lr.shape) == ["batch", 3, "height", "width"]
    assert d["dynamic"] == ["batch", "height", "width"]
    assert d["signature"]["input"] == {"name": lr.name, "shape": list(lr.shape),
                                       "dtype": "float32"}
    assert d["signature"]["output"]["shape"] == list(sr.shape)
    assert d["traced"] == traced[0] == [2, 3, 8, 12]


def test_an_unwritable_cache_keeps_the_tensorrt_engine_just_built(tmp_path, monkeypatch,
                                                                  caplog):
    """A TensorRT engine (minutes to build) whose cache folder cannot be written (a read-only
    home; here the folder is a file) was thrown away with the error, and the run fell back to
    a slower backend; it runs, with a warning that it is not kept (as ONNX does). torch-tensorrt
    is stood in for by a module whose compile returns the network itself."""
    import logging
    import sys
    import types

    from vsr.backends import EngineCache
    from vsr.backends.tensorrt import TENSORRT
    from vsr.models import DRN, NetworkUpscaler

    for name in ("tensorrt", "torch_tensorrt"):
        fake = types.ModuleType(name)
        fake.__version__ = "0.test"
        fake.compile = lambda net, **kw: net
        fake.save = lambda module, path, **kw: pytest.fail("nothing can be saved here")
        monkeypatch.setitem(sys.modules, name, fake)
    torch.manual_seed(0)
    h = NetworkUpscaler("tiny", DRN(scale=2, n_feats=4, n_blocks=[1]))
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="vsr.backends"):
        fn = TENSORRT.build(h, (1, 3, 16, 16), EngineCache(blocker / "cache"))
    x = torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(fn(x), h.infer(x), rtol=0, atol=0)
    (message,) = [r.getMessage() for r in caplog.records]
    assert "not writable" in message and "not kept" in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]


def test_an_output_that_appears_during_the_export_is_kept(drn_checkpoint, tmp_path,
                                                          monkeypatch):
    """Without --overwrite the output is checked when the export starts; a file written to
    that name meanwhile (another run, another user) was silently replaced at the end."""
    import vsr.export as export_module
    from vsr.errors import OutputError
    from vsr.export import ExportConfig, export_model

    out = tmp_path / "m.pt"
    real = export_module.export_torchscript

    def racing(module, path, sample):
        real(module, path, sample)
        out.write_bytes(b"theirs")

    monkeypatch.setattr(export_module, "export_torchscript", racing)
    with pytest.raises(OutputError, match="appeared while this run wrote it"):
        export_model(ExportConfig(model=str(drn_checkpoint), format="torchscript", output=out,
                                  height=8, width=8))
    assert out.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    out.unlink()  # --overwrite: replaced, as asked
    r = export_model(ExportConfig(model=str(drn_checkpoint), format="torchscript", output=out,
                                  height=8, width=8, overwrite=True))
    assert r.bytes == out.stat().st_size > 6


def test_the_cache_folder_from_the_environment(tmp_path, monkeypatch):
    """VSR_CACHE_DIR=~/vsr-cache as a service manager or a .env file passes it (unexpanded)
    made a folder named '~' in the working directory; a relative XDG_CACHE_HOME, which the
    XDG specification says to ignore, put the cache wherever vsr was started."""
    from vsr.backends import EngineCache, default_cache_dir

    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("VSR_CACHE_DIR", "~/vsr-cache")
    assert default_cache_dir() == home / "vsr-cache"
    assert EngineCache().root == home / "vsr-cache"
    monkeypatch.delenv("VSR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    assert default_cache_dir() == home / ".cache" / "vsr"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "vsr"
    monkeypatch.setenv("VSR_CACHE_DIR", "cache")  # relative: the working directory's, as given
    assert default_cache_dir().resolve() == work / "cache"
    assert list(work.iterdir()) == []


@needs_ort
def test_an_onnx_file_that_takes_one_size_is_reported_and_checked_as_such(
        drn_checkpoint, tmp_path, monkeypatch):
    """Where the exporter writes a file of fixed input size (stood in for here by an export
    without dynamic axes), --json still said "dynamic": ["batch", "height", "width"], and the
    check at other sizes was onnxruntime's traceback, not an Error line."""
    import vsr.export as export_module
    from vsr.backends.base import NetworkOnly
    from vsr.errors import OutputError
    from vsr.export import ExportConfig, export_model

    def static_export(module, path, *, sample_hw=(32, 32), batch=1, **kw):
        x = torch.rand(batch, 3, *sample_hw)
        torch.onnx.export(NetworkOnly(module).eval(), (x,), str(path), dynamo=False,
                          input_names=["lr"], output_names=["sr"])

    monkeypatch.setattr(export_module, "export_onnx", static_export)
    out = tmp_path / "m.onnx"
    with pytest.raises(OutputError, match="does not run in onnxruntime") as err:
        export_model(ExportConfig(model=str(drn_checkpoint), format="onnx", output=out,
                                  height=8, width=8))
    assert "\n" not in str(err.value) and list(tmp_path.iterdir()) == []
    r = export_model(ExportConfig(model=str(drn_checkpoint), format="onnx", output=out,
                                  height=8, width=8, check=False))
    assert (r.shape, r.dynamic, r.traced) == ([1, 3, 8, 8], [], [1, 3, 8, 8])


def test_no_home_folder_costs_the_engine_cache_not_the_run(tmp_path, monkeypatch, caplog):
    """With no home folder (HOME unset and no passwd entry: a container run as an arbitrary
    user id) and no VSR_CACHE_DIR, `vsr upscale` failed with 'internal error: RuntimeError:
    Could not determine home directory', even with --backend eager, which needs no cache."""
    import logging
    from pathlib import Path

    from vsr.backends import default_cache_dir, prepare
    from vsr.errors import ConfigError
    from vsr.models import DRN, NetworkUpscaler

    def no_home(cls=None):
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", classmethod(no_home))
    monkeypatch.delenv("VSR_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    with pytest.raises(ConfigError, match="set VSR_CACHE_DIR"):
        default_cache_dir()
    torch.manual_seed(0)
    h = NetworkUpscaler("tiny", DRN(scale=2, n_feats=4, n_blocks=[1]))
    x = torch.rand(1, 3, 16, 16)
    assert prepare(h, "eager", (1, 3, 16, 16), sample=x).backend == "eager"
    with caplog.at_level(logging.WARNING, logger="vsr.backends"):
        runner = prepare(h, "onnx", (1, 3, 16, 16), sample=x)
    assert runner.backend == "eager"
    assert len(runner.notes) == 1 and "set VSR_CACHE_DIR" in runner.notes[0]
    monkeypatch.setenv("VSR_CACHE_DIR", str(tmp_path / "cache"))  # the way out it names
    if HAS_ORT:
        assert prepare(h, "onnx", (1, 3, 16, 16), sample=x).backend == "onnx"
