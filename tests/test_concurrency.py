"""The library called from several threads at once (a web service's pool, a GUI's worker):
results as a serial run gives them, shared state loaded once and never changed under a run."""

from __future__ import annotations

import contextlib
import threading

import av
import numpy as np
import pytest
import torch

import vsr
import vsr.engine
from vsr.engine import ModelCache
from vsr.models.handle import BicubicUpscaler


def _frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _in_threads(*targets) -> list:
    """Run each target in a thread of its own; their results (or what they raised)."""
    results: list = [None] * len(targets)

    def run(i: int) -> None:
        try:
            results[i] = targets[i]()
        except BaseException as exc:  # noqa: BLE001  (reported by the test)
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True)
               for i in range(len(targets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_threads_sharing_a_model_cache_load_each_model_once(clip, tmp_path, monkeypatch) -> None:
    """Two upscale_file calls at once with one ModelCache (models=, to reuse loads across a
    pool's requests) both loaded the model, and the cache kept the copy it lost track of
    (with its prepared backends) for good."""
    src = clip(frames=3)
    both = threading.Barrier(2, timeout=2)
    loads: list[object] = []
    real = vsr.engine.load_model

    def load(*args, **kwargs):
        loads.append(threading.current_thread().name)
        with contextlib.suppress(threading.BrokenBarrierError):
            both.wait()  # a second loader, if there is one, gets here too
        return real(*args, **kwargs)

    monkeypatch.setattr(vsr.engine, "load_model", load)
    cache = ModelCache()

    def run(name: str):
        return lambda: vsr.upscale_file(
            vsr.UpscaleConfig(input=src, output=tmp_path / name, model="bicubic", scale=2,
                              device="cpu", precision="fp32", backend="eager"), models=cache)

    results = _in_threads(run("a.mkv"), run("b.mkv"))
    assert [type(r).__name__ for r in results] == ["UpscaleResult"] * 2, results
    assert len(loads) == 1
    assert all(np.array_equal(x, y) for x, y in zip(_frames(tmp_path / "a.mkv"),
                                                    _frames(tmp_path / "b.mkv"), strict=True))
    # the one handle is what a later caller gets too
    options = vsr.UpscaleConfig(input=src, output=tmp_path / "c.mkv", model="bicubic",
                                scale=2, device="cpu", precision="fp32", backend="eager")
    assert cache.handle(options, "cpu", pixels=64 * 48) is cache.handle(options, "cpu",
                                                                          pixels=64 * 48)
    assert len(loads) == 1


class _Guarded(BicubicUpscaler):
    """Bicubic that the pipeline's guard watches, as it does a network (whose fp16 or bf16
    output can fail, so that a run may fall back to fp32)."""

    can_fail = True


def test_concurrent_runs_in_a_reduced_precision_share_one_model(clip, tmp_path,
                                                                monkeypatch) -> None:
    """Two upscale_file calls at once in fp16, sharing a ModelCache: both compute with one
    copy of the model (a run's fp32 fallback no longer changes the handle itself, so no run
    needs one of its own), and each writes what a serial run writes."""
    src = clip(frames=4)
    copies: list[object] = []

    def load(model, *, scale, device, precision, **_):
        copies.append(_Guarded("guarded", scale, device=device,
                               dtype=vsr.loading.DTYPES[precision]))
        return copies[-1]

    monkeypatch.setattr(vsr.engine, "load_model", load)

    def config(name: str) -> vsr.UpscaleConfig:
        return vsr.UpscaleConfig(input=src, output=tmp_path / name, model="bicubic", scale=2,
                                 device="cpu", precision="fp16", backend="eager")

    serial = vsr.upscale_file(config("serial.mkv"))
    assert serial.precision == "float16"
    copies.clear()
    cache = ModelCache()
    inside = {"a": threading.Event(), "b": threading.Event()}

    def run(me: str, other: str):
        def progress(p) -> None:  # each run waits, inside, until the other is inside too
            inside[me].set()
            assert inside[other].wait(30)
        return lambda: vsr.upscale_file(config(f"{me}.mkv"), models=cache, progress=progress)

    results = _in_threads(run("a", "b"), run("b", "a"))
    assert [type(r).__name__ for r in results] == ["UpscaleResult"] * 2, results
    assert [r.precision for r in results] == ["float16"] * 2
    assert len(copies) == 1
    expected = _frames(tmp_path / "serial.mkv")
    for name in ("a.mkv", "b.mkv"):
        got = _frames(tmp_path / name)
        assert len(got) == len(expected)
        assert all(np.array_equal(x, y) for x, y in zip(got, expected, strict=True))


class _FailsInFp16InThreadA(_Guarded):
    """Bicubic whose fp16 output is NaN when run by the thread named "A": a network that
    overflows in fp16 on one caller's frames only."""

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        y = super()._run(x)
        if x.dtype == torch.float16 and threading.current_thread().name == "A":
            return torch.full_like(y, float("nan"))
        return y


@pytest.mark.parametrize("b_starts", ["before", "after"])
def test_a_fallback_to_fp32_does_not_change_another_threads_run(b_starts, clip, tmp_path,
                                                                monkeypatch) -> None:
    """Two runs in fp16 sharing a ModelCache: one (A) fell back to fp32 on a bad frame, which
    switched the handle both ran to fp32 under the other run (B), started before A's
    fallback or after it: B then ran (and said it ran) in fp32, its frames no longer those of
    its serial run."""
    src = clip(frames=6)

    def load(model, *, scale, device, precision, **_):
        return _FailsInFp16InThreadA("flaky", scale, device=device,
                                     dtype=vsr.loading.DTYPES[precision])

    monkeypatch.setattr(vsr.engine, "load_model", load)

    def config(name: str) -> vsr.UpscaleConfig:
        return vsr.UpscaleConfig(input=src, output=tmp_path / name, model="bicubic", scale=2,
                                 device="cpu", precision="fp16", backend="eager")

    serial = vsr.upscale_file(config("serial.mkv"))
    assert (serial.precision, serial.fallback_fp32) == ("float16", False)

    cache = ModelCache()
    b_inside, fell_back, b_done = threading.Event(), threading.Event(), threading.Event()

    def run_a():
        threading.current_thread().name = "A"
        if b_starts == "before":
            assert b_inside.wait(30)  # B holds the model and is past its first frame

        def progress(p) -> None:
            fell_back.set()
            if b_starts == "after":  # A holds the handle it switched to fp32 while B runs
                assert b_done.wait(30)
        return vsr.upscale_file(config("a.mkv"), models=cache, progress=progress)

    def run_b():
        if b_starts == "after":
            assert fell_back.wait(30)

        def progress(p) -> None:
            b_inside.set()
            if b_starts == "before":  # B is inside its run while A falls back
                assert fell_back.wait(30)
        try:
            return vsr.upscale_file(config("b.mkv"), models=cache, progress=progress)
        finally:
            b_done.set()

    a, b = _in_threads(run_a, run_b)
    assert not isinstance(a, BaseException), a
    assert not isinstance(b, BaseException), b
    assert (a.precision, a.fallback_fp32) == ("float32", True)
    assert (b.precision, b.fallback_fp32, b.fallback_frames) == ("float16", False, 0)
    expected = _frames(tmp_path / "serial.mkv")
    got = _frames(tmp_path / "b.mkv")
    assert len(got) == len(expected)
    assert all(np.array_equal(x, y) for x, y in zip(got, expected, strict=True))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_one_handle_upscales_from_threads_as_it_does_serially(precision) -> None:
    """handle.upscale from several threads at once on one handle: each result is the
    serial one."""
    handle = vsr.load_model("bicubic", scale=2, device="cpu", precision=precision)
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, 256, (1, 3, 20 + 4 * i, 28), dtype=torch.uint8, generator=gen)
              for i in range(4)]
    expected = [handle.upscale(x) for x in inputs]
    start = threading.Barrier(len(inputs))

    def run(x):
        def go():
            start.wait()
            return [handle.upscale(x) for _ in range(3)]
        return go

    results = _in_threads(*(run(x) for x in inputs))
    for got, want in zip(results, expected, strict=True):
        assert not isinstance(got, BaseException), got
        assert all(torch.equal(g, want) for g in got)


def test_a_ctrl_c_while_the_input_opens_is_interrupted(clip, tmp_path, monkeypatch) -> None:
    """upscale_file promises Interrupted on Ctrl-C (a GUI's worker catches it, or VsrError, to
    say "cancelled"); one landing while the input opened (a slow network mount, a probe of a
    large file) came out as a bare KeyboardInterrupt."""
    import vsr.upscale

    src = clip(frames=2)

    def opening(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vsr.upscale, "open_source", opening)
    out = tmp_path / "out.mkv"
    (result,) = _in_threads(lambda: vsr.upscale_file(
        vsr.UpscaleConfig(input=src, output=out, model="bicubic", scale=2, device="cpu")))
    assert isinstance(result, vsr.Interrupted), result
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


@pytest.mark.parametrize("model", ["bicubic", "network"])
def test_an_upscaled_frame_can_be_changed_in_place_by_another_thread(model,
                                                                      drn_checkpoint) -> None:
    """A GUI's worker thread upscales, the GUI thread draws on the result: handle.upscale
    gave an inference-mode tensor, which refuses any in-place change outside inference mode
    ("Inplace update to inference tensor outside InferenceMode is not allowed")."""
    handle = (vsr.load_model("bicubic", scale=2, device="cpu", precision="fp32")
              if model == "bicubic" else
              vsr.load_model(str(drn_checkpoint), device="cpu", precision="fp32"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, 3, 12, 16), dtype=torch.uint8, generator=gen)
    with torch.inference_mode():
        expected = handle.infer(x.float() / 255.0).clamp(0, 1).mul(255).round().to(torch.uint8)
    (y,) = _in_threads(lambda: handle.upscale(x))
    assert torch.equal(y, expected)
    y[..., :2, :] = 255  # an overlay drawn on the frame
    y.clamp_(0, 200)
    assert int(y[..., 0, 0].max()) == 200
    (f,) = _in_threads(lambda: handle.upscale(x.float() / 255.0))
    f.mul_(0.5)
