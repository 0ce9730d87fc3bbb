"""Backends: engine-cache key, fallback on a real missing import, ONNX/eager agreement,
validation against eager, the compile backend (slow: a cold torch.compile takes minutes)."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os

import pytest
import torch

from vsr.backends import (
    EngineCache,
    EngineKey,
    candidates,
    model_digest,
    parse_backends,
    prepare,
)
from vsr.errors import ConfigError
from vsr.models import DRN, BicubicUpscaler, NetworkUpscaler

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None


def tiny_handle(seed: int = 0) -> NetworkUpscaler:
    torch.manual_seed(seed)
    return NetworkUpscaler("tiny", DRN(scale=2, n_feats=4, n_blocks=[1]))


def frames(shape, seed: int = 1) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_cache_key_changes_when_any_input_changes():
    base = EngineKey(model="a" * 64, backend="tensorrt", shape=(1, 3, 540, 960),
                     precision="float16", device="NVIDIA H100", tensorrt="tensorrt 10.3",
                     torch="2.13.0", extra="")
    other = {"model": "b" * 64, "backend": "onnx", "shape": (1, 3, 540, 961),
             "precision": "float32", "device": "NVIDIA L4", "tensorrt": "tensorrt 10.4",
             "torch": "2.13.1", "extra": "opset18"}
    assert set(other) == {f.name for f in dataclasses.fields(EngineKey)}
    digests = {base.digest()}
    for name, value in other.items():
        digests.add(dataclasses.replace(base, **{name: value}).digest())
    assert len(digests) == 1 + len(other)
    assert dataclasses.replace(base).digest() == base.digest()  # and it is stable
    assert dataclasses.replace(base, shape=(2, 3, 540, 960)).digest() != base.digest()


def test_model_digest_follows_weights_and_hparams():
    a, b = tiny_handle(0).module, tiny_handle(0).module
    assert model_digest(a) == model_digest(b)
    with torch.no_grad():
        b.head.weight[0, 0, 0, 0] += 1e-3
    assert model_digest(a) != model_digest(b)
    torch.manual_seed(0)
    wider = DRN(scale=2, n_feats=4, n_blocks=[2])
    assert model_digest(wider) != model_digest(a)


def test_candidates_and_names():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert candidates("auto", cpu) == ("eager",)  # eager is fastest on large frames
    assert candidates("auto", cpu, (1, 3, 360, 640)) == ("eager",)
    assert candidates("auto", cpu, (1, 3, 144, 176)) == ("onnx", "eager")  # but not on tiny
    assert candidates("onnx", cpu) == ("onnx", "eager")
    assert candidates("auto", cuda) == ("tensorrt", "compile", "eager")
    assert candidates("tensorrt", cpu) == ("tensorrt", "eager")
    assert candidates("compile", cuda) == ("compile", "eager")
    assert candidates("eager", cpu) == ("eager",)
    assert parse_backends("eager, compile,onnx") == ("eager", "compile", "onnx")
    with pytest.raises(ConfigError, match="unknown backend"):
        parse_backends("eager,tensorrtx")
    for text in ("eager,", ",eager", "eager,,onnx", "", " "):  # a name left out
        with pytest.raises(ConfigError, match="unknown backend ''"):
            parse_backends(text)
    with pytest.raises(ConfigError, match="eager is given twice"):
        parse_backends("eager,onnx, eager")
    with pytest.raises(ConfigError, match="unknown backend"):
        candidates("fast", cpu)


def test_auto_choice_ignores_process_tuning():
    """The allocator tuning the CLI applies does not change which backend auto picks: the
    same frame gets the same backend from `vsr` and from a Python program."""
    import subprocess
    import sys

    probe = ("import torch, vsr.hostmem as h, vsr.backends as b; h.keep_freed_memory(); "
             "print(h.freed_memory_kept(), b.candidates('auto', torch.device('cpu'), "
             "(1, 3, 360, 640)), b.candidates('auto', torch.device('cpu'), (1, 3, 144, 176)))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    tuned = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           check=True, env=env).stdout.split(" ", 1)
    plain = subprocess.run([sys.executable, "-c", probe.replace("h.keep_freed_memory(); ", "")],
                           capture_output=True, text=True, check=True, env=env).stdout.split(" ", 1)
    assert tuned[0] == "True" and plain[0] == "False"  # the tuning did differ
    assert tuned[1] == plain[1]


def test_tensorrt_on_a_cpu_falls_back_with_one_warning_naming_the_device(tmp_path, caplog):
    """On a CPU the run goes on with the CPU's backends, correctly; the warning names the
    device (it said torch-tensorrt was not installed, which installing would not mend)."""
    h = tiny_handle()
    x = frames((1, 3, 20, 28))
    with caplog.at_level(logging.WARNING, logger="vsr.backends"):
        runner = prepare(h, "tensorrt", tuple(x.shape), cache=EngineCache(tmp_path))
    assert runner.backend == ("onnx" if HAS_ORT else "eager")  # the CPU's auto order
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "backend tensorrt: TensorRT needs a CUDA device, this run is on cpu" in warnings[0]
    assert runner.notes == warnings
    assert (runner(x) - h.infer(x)).abs().max() <= 1e-4


def test_auto_on_cpu_takes_onnx_where_installed_without_warnings(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="vsr.backends"):
        runner = prepare(tiny_handle(), "auto", (1, 3, 16, 16), cache=EngineCache(tmp_path))
    assert runner.backend == ("onnx" if HAS_ORT else "eager") and not caplog.records
    bicubic = prepare(BicubicUpscaler("bicubic", 2), "auto", (1, 3, 16, 16),
                      cache=EngineCache(tmp_path))
    assert bicubic.backend == "eager" and not caplog.records


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_onnx_backend_matches_eager_and_caches_the_export(tmp_path):
    h = tiny_handle()
    cache = EngineCache(tmp_path)
    runner = prepare(h, "onnx", (2, 3, 24, 36), cache=cache)
    assert runner.backend == "onnx" and runner.max_error <= 1e-4
    x = frames((2, 3, 24, 36))
    assert (runner(x) - h.infer(x)).abs().max() <= 1e-4
    files = list((tmp_path / "engines").glob("onnx-*.onnx"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    again = prepare(h, "onnx", (1, 3, 40, 20), cache=cache)  # dynamic H/W: same file
    assert again.backend == "onnx"
    assert list((tmp_path / "engines").glob("onnx-*.onnx")) == files
    assert files[0].stat().st_mtime_ns == stamp
    y = frames((1, 3, 40, 20), seed=3)
    assert (again(y) - h.infer(y)).abs().max() <= 1e-4


def _damage_weights(path) -> None:
    """Scale the largest initializer of the ONNX file at ``path`` by 1.5: a file that loads
    and runs, computing something else (as flipped bits in a weight would)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    init = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    onnx.save(m, str(path))


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
@pytest.mark.parametrize("wrong", ["another model", "another scale", "damaged weights"])
def test_a_cached_engine_that_computes_wrong_is_rebuilt(tmp_path, caplog, wrong):
    """A cached engine that loads but does not compute this model (another model's export put
    under this key; weights damaged but still parsing) disagrees with eager on the first frame:
    that run, and every later one, fell back to eager until the file was deleted by hand. It
    is rebuilt once, with a warning, and the rebuilt file is kept."""
    from vsr.backends.onnx import export_onnx

    h, other = tiny_handle(0), tiny_handle(1)
    cache = EngineCache(tmp_path)
    prepare(h, "onnx", (1, 3, 16, 16), cache=cache)
    (path,) = (tmp_path / "engines").glob("onnx-*.onnx")
    if wrong == "another model":
        export_onnx(other.module, path)
    elif wrong == "another scale":  # gives frames of another size: differs by inf
        export_onnx(DRN(scale=4, n_feats=4, n_blocks=[1, 1]), path)
    else:
        _damage_weights(path)
    x = frames((1, 3, 16, 16))
    with caplog.at_level(logging.WARNING, logger="vsr.backends"):
        runner = prepare(h, "onnx", (1, 3, 16, 16), sample=x, cache=cache)
    assert runner.backend == "onnx", runner.notes
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cached engine differs from eager" in warnings[0]
    assert "rebuilding" in warnings[0] and runner.notes == warnings
    assert (runner(x) - h.infer(x)).abs().max() <= 1e-4
    assert list((tmp_path / "engines").iterdir()) == [path]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vsr.backends"):
        again = prepare(h, "onnx", (1, 3, 16, 16), sample=x, cache=cache)
    assert again.backend == "onnx" and again.notes == [] and not caplog.records


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_an_engine_still_wrong_when_rebuilt_falls_back_to_eager(tmp_path, caplog,
                                                                 monkeypatch):
    """Where a fresh build is wrong too (here: the exporter gives another model), eager runs;
    a later run that finds that very file falls back at once (a TensorRT rebuild takes
    minutes), and one that finds the file replaced rebuilds it once, then falls back."""
    import vsr.backends.onnx as onnx_backend

    h, other = tiny_handle(0), tiny_handle(1)
    cache = EngineCache(tmp_path)
    real = onnx_backend.export_onnx
    calls = []

    def wrong_export(module, path, **kw):
        calls.append(path)
        real(other.module, path, **kw)

    monkeypatch.setattr(onnx_backend, "export_onnx", wrong_export)
    x = frames((1, 3, 16, 16))
    with caplog.at_level(logging.WARNING, logger="vsr.backends"):
        fresh = prepare(h, "onnx", (1, 3, 16, 16), sample=x, cache=cache)
    assert fresh.backend == "eager" and len(calls) == 1  # built fresh: not rebuilt
    assert [n for n in fresh.notes if "rebuilding" in n] == []
    with caplog.at_level(logging.WARNING, logger="vsr.backends"):
        runner = prepare(h, "onnx", (1, 3, 16, 16), sample=x, cache=cache)
    assert runner.backend == "eager" and len(calls) == 1  # that very file: not rebuilt
    assert runner.notes == [fresh.notes[-1]]
    (path,) = (tmp_path / "engines").glob("onnx-*.onnx")
    real(tiny_handle(2).module, path)  # the file replaced: rebuilt once, still wrong
    with caplog.at_level(logging.WARNING, logger="vsr.backends"):
        runner = prepare(h, "onnx", (1, 3, 16, 16), sample=x, cache=cache)
    assert runner.backend == "eager" and len(calls) == 2
    assert len(runner.notes) == 2
    assert "rebuilding" in runner.notes[0] and "falling back to eager" in runner.notes[1]
    torch.testing.assert_close(runner(x), h.infer(x), rtol=0, atol=0)
    with caplog.at_level(logging.WARNING, logger="vsr.backends"):
        assert prepare(h, "onnx", (1, 3, 16, 16), sample=x, cache=cache).backend == "eager"
    assert len(calls) == 2


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_corrupt_cached_onnx_engine_is_rebuilt(tmp_path, caplog, damage):
    """A cached ONNX file that onnxruntime cannot load (a disk filled up, a copied cache) is
    rebuilt, once, with a warning: it fell back to eager on every run until deleted by hand."""
    h = tiny_handle()
    cache = EngineCache(tmp_path)
    prepare(h, "onnx", (1, 3, 16, 16), cache=cache)
    (path,) = (tmp_path / "engines").glob("onnx-*.onnx")
    good = path.read_bytes()
    path.write_bytes({"truncated": good[: len(good) // 2], "empty": b"",
                      "garbage": os.urandom(4096)}[damage])
    x = frames((1, 3, 16, 16))
    with caplog.at_level(logging.WARNING, logger="vsr.backends"):
        runner = prepare(h, "onnx", (1, 3, 16, 16), sample=x, cache=cache)
    assert runner.backend == "onnx", runner.notes
    assert any("rebuilding" in r.getMessage() for r in caplog.records)
    assert (runner(x) - h.infer(x)).abs().max() <= 1e-4
    assert list((tmp_path / "engines").iterdir()) == [path]  # no temp file left beside it
    assert path.stat().st_size > 0.9 * len(good)


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_unwritable_engine_cache_still_runs_onnx(tmp_path, caplog):
    """An engine cache that cannot be written (here: its folder is a file; a read-only home
    alike) costs the export's keeping, not the backend: onnx was dropped for eager, so the
    backend, and the output, depended on the state of the cache folder."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    h = tiny_handle()
    x = frames((1, 3, 16, 16))
    with caplog.at_level(logging.WARNING, logger="vsr.backends"):
        runner = prepare(h, "onnx", (1, 3, 16, 16), sample=x,
                         cache=EngineCache(blocker / "cache"))
    assert runner.backend == "onnx", runner.notes
    assert any("not writable" in r.getMessage() for r in caplog.records)
    assert (runner(x) - h.infer(x)).abs().max() <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_a_sample_unlike_the_shape_is_refused(tmp_path, monkeypatch):
    """A validation sample of another shape (or dtype) than the runner's ran eagerly inside
    the runner, so the check compared eager with eager and passed any engine, a wrong one too
    (here: one that gives half the right answer)."""
    from types import MappingProxyType

    import vsr.backends as backends

    h = tiny_handle()
    wrong = dataclasses.replace(backends.ONNX, build=lambda *a, **kw: lambda x: h.infer(x) / 2)
    monkeypatch.setattr(backends, "BACKENDS",
                        MappingProxyType({**backends.BACKENDS, "onnx": wrong}))
    for sample in (frames((1, 3, 16, 16)), frames((2, 3, 16, 16)).double()):
        with pytest.raises(ConfigError, match="validation sample must be"):
            prepare(h, "onnx", (2, 3, 16, 16), sample=sample, cache=EngineCache(tmp_path))
    runner = prepare(h, "onnx", (2, 3, 16, 16), sample=frames((2, 3, 16, 16)),
                     cache=EngineCache(tmp_path))
    assert runner.backend == "eager"  # the wrong engine is caught with a fitting sample


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_runner_runs_other_shapes_eagerly(tmp_path):
    h = tiny_handle()
    runner = prepare(h, "onnx", (1, 3, 16, 16), cache=EngineCache(tmp_path))
    x = frames((3, 3, 10, 12))  # a short batch, another size: eager, exactly
    torch.testing.assert_close(runner(x), h.infer(x), rtol=0, atol=0)


@pytest.mark.slow
def test_compile_backend_matches_eager(tmp_path):
    torch.set_num_threads(1)
    h = tiny_handle()
    runner = prepare(h, "compile", (1, 3, 20, 24), cache=EngineCache(tmp_path))
    assert runner.backend == "compile", runner.notes
    x = frames((1, 3, 20, 24), seed=5)
    assert (runner(x) - h.infer(x)).abs().max() <= 1e-4


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_processes_building_one_engine_at_once_all_get_it(tmp_path):
    """Three processes exporting the same cache entry at once (each to its own temporary file,
    renamed into place) all run onnx; one file is left, no partial beside it."""
    import subprocess
    import sys

    script = ("import sys, torch\n"
              "from vsr.backends import EngineCache, prepare\n"
              "from vsr.models import DRN, NetworkUpscaler\n"
              "torch.manual_seed(0)\n"
              "h = NetworkUpscaler('tiny', DRN(scale=2, n_feats=8, n_blocks=[2]))\n"
              "r = prepare(h, 'onnx', (1, 3, 16, 16), cache=EngineCache(sys.argv[1]))\n"
              "print(r.backend)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip() == "onnx", err
    files = list((tmp_path / "engines").iterdir())
    assert len(files) == 1 and files[0].suffix == ".onnx", files


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_the_onnx_backend_starts_onnxruntime_with_its_telemetry_off(tmp_path):
    """onnxruntime 1.29+ on Linux queued usage events for upload to Microsoft and wrote a
    device identifier under ~/.cache/Microsoft and a `.ses` file in the temp folder on every
    `vsr upscale` that took the ONNX backend; vsr sends nothing anywhere."""
    import json
    import subprocess
    import sys

    import numpy as np

    from vsr.io.image import save_image

    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    src = tmp_path / "in.png"
    save_image(src, np.random.default_rng(0).integers(0, 256, (24, 32, 3), np.uint8))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ORT_") and k not in ("CI", "GITHUB_ACTIONS", "TF_BUILD")}
    proc = subprocess.run(
        [sys.executable, "-m", "vsr", "upscale", str(src), str(tmp_path / "out.png"),
         "--backend", "onnx", "--device", "cpu", "--json"],
        env={**env, "HOME": str(home), "TMPDIR": str(tmp)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["backend"] == "onnx"
    assert not (home / ".cache" / "Microsoft").exists()
    assert list(tmp.iterdir()) == []
