"""The model cache under a run's fp32 fallback and mixed precisions: a fallback computes with
the weights the run started with, and equal models are held once (one handle, one load)."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import make_clip

import vsr.engine
import vsr.loading
from vsr.engine import ModelCache
from vsr.io.sink import EncodeConfig
from vsr.options import ModelOptions
from vsr.pipeline.compute import CpuProcessor
from vsr.upscale import UpscaleConfig, upscale_file

LOSSLESS = EncodeConfig(codec="ffv1", pix_fmt="bgr0")  # RGB: the model's bytes, exactly


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _fall_back_once(monkeypatch, before) -> None:
    """The guard finds the first reduced-precision result bad (as it does a NaN), and
    ``before()`` runs just before the run falls back to fp32."""
    real = CpuProcessor._bad

    def bad(self, x, y, n):
        if y.dtype != torch.float32:
            before()
            return True
        return real(self, x, y, n)

    monkeypatch.setattr(CpuProcessor, "_bad", bad)


def _save_other_weights(path: Path) -> None:
    """Another randomly initialised drn-t-x2, of the same name, over ``path``."""
    from vsr.models import CheckpointInfo, create_model, save_model

    torch.manual_seed(1)
    model = create_model("drn-t-x2", pretrained=False)
    save_model(path, model, CheckpointInfo(arch="drn", hparams=dict(model.hparams), scale=2,
                                           name="drn-t-x2-random"))


@pytest.mark.parametrize("change", ["replaced", "deleted"])
def test_a_fallback_computes_with_the_weights_the_run_started_with(
        change, drn_checkpoint, tmp_path, monkeypatch) -> None:
    """A bf16 run that fell back to fp32 loaded the model again from its file: a checkpoint
    replaced since the run started gave the rest of its frames from other weights, a deleted
    one failed the run. It now computes with the weights it was loaded with, in fp32."""
    ckpt = tmp_path / "model.safetensors"
    shutil.copyfile(drn_checkpoint, ckpt)
    src = make_clip(tmp_path / "in.mkv", frames=3, size=(64, 48))

    def config(name: str, precision: str) -> UpscaleConfig:
        return UpscaleConfig(input=src, output=tmp_path / name, model=str(ckpt), device="cpu",
                             precision=precision, backend="eager", encode=LOSSLESS)

    upscale_file(config("fp32.mkv", "fp32"))

    def change_weights() -> None:
        if change == "deleted":
            ckpt.unlink(missing_ok=True)
        else:
            _save_other_weights(ckpt)

    _fall_back_once(monkeypatch, change_weights)
    cache = ModelCache()
    run = upscale_file(config("bf16.mkv", "bf16"), models=cache)
    assert (run.precision, run.fallback_fp32, run.fallback_frames) == ("float32", True, 1)
    want, got = _frames(tmp_path / "fp32.mkv"), _frames(tmp_path / "bf16.mkv")
    assert len(got) == len(want) == 3
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    # the shared handle the run started with is as it was: in bf16, for the next run
    options = ModelOptions(model=str(ckpt), precision="bf16", backend="eager")
    assert cache.handle(options, "cpu", pixels=64 * 48).dtype == torch.bfloat16


def _count_loads(monkeypatch) -> list[str]:
    """The precision of each model load the cache makes from a file."""
    loads: list[str] = []
    real = vsr.engine.load_model

    def load(*args, **kwargs):
        loads.append(kwargs["precision"])
        return real(*args, **kwargs)

    monkeypatch.setattr(vsr.engine, "load_model", load)
    return loads


@pytest.mark.parametrize("first", ["fp32", "bf16"])
def test_auto_fp32_and_a_fallback_share_one_handle(first, drn_checkpoint, monkeypatch) -> None:
    """`auto` that comes to fp32 (small frames, deep frames), `fp32` and a bf16 run's fp32
    fallback were three cache keys: a service with mixed requests held three fp32 copies of one
    model, each loaded from its file. They are one handle now, and the model loads once: its
    other precision is made from that load, and computes as a load in that precision does."""
    loads = _count_loads(monkeypatch)
    monkeypatch.setattr(vsr.loading, "cpu_has_native_bf16", lambda: True)  # auto: bf16 on
    cache = ModelCache()                                                    # large frames

    def handle(precision: str, pixels: int | None = None, bit_depth: int = 8):
        return cache.handle(ModelOptions(model=str(drn_checkpoint), precision=precision,
                                         backend="eager"), "cpu", pixels=pixels,
                            bit_depth=bit_depth)

    large = 720 * 1280
    handle(first)
    fp32, bf16 = handle("fp32"), handle("bf16")
    assert (fp32.dtype, bf16.dtype) == (torch.float32, torch.bfloat16)
    assert handle("auto", pixels=64 * 48) is fp32  # small frames stay in fp32 on the CPU
    assert handle("auto", pixels=large, bit_depth=10) is fp32  # deeper than bf16 carries
    assert handle("auto", pixels=large) is bf16
    prepared = cache.prepare(bf16, ModelOptions(model=str(drn_checkpoint), precision="bf16"),
                             None)
    assert prepared.fp32() is fp32  # what a bf16 run falls back to
    assert loads == [first]
    x = torch.rand(1, 3, 20, 24)
    for made in (fp32, bf16):
        loaded = vsr.loading.load_model(str(drn_checkpoint), device="cpu",
                                        precision="fp32" if made is fp32 else "bf16")
        assert torch.equal(made.infer(x.to(made.dtype)), loaded.infer(x.to(made.dtype)))


def test_auto_and_fp32_share_a_handle_without_bf16_in_hardware(monkeypatch) -> None:
    """On a CPU without bf16 in hardware auto is fp32 for every frame: one handle, one load."""
    loads = _count_loads(monkeypatch)
    monkeypatch.setattr(vsr.loading, "cpu_has_native_bf16", lambda: False)
    cache = ModelCache()
    auto = cache.handle(ModelOptions(model="drn-t-x2", precision="auto"), "cpu",
                        pixels=720 * 1280)
    assert auto.dtype == torch.float32
    assert cache.handle(ModelOptions(model="drn-t-x2", precision="fp32"), "cpu") is auto
    assert cache.handle(ModelOptions(model="drn-t-x2", precision="auto"), "cpu") is auto
    assert loads == ["auto"]


@pytest.mark.parametrize("after", ["released", "cache gone"])
def test_a_fallback_after_its_handle_left_the_cache_keeps_its_weights(
        after, drn_checkpoint, tmp_path) -> None:
    """A run whose handle the cache has let go (the stream's first handle, released once the
    frames chose another precision) or whose cache is gone (a Prepared kept in a result)
    falls back to an fp32 copy of its own weights, not to whatever the file holds by then."""
    import gc

    ckpt = tmp_path / "model.safetensors"
    shutil.copyfile(drn_checkpoint, ckpt)
    want = vsr.loading.load_model(str(ckpt), device="cpu", precision="fp32")
    cache = ModelCache()
    options = ModelOptions(model=str(ckpt), precision="bf16", backend="eager")
    prepared = cache.prepare(cache.handle(options, "cpu"), options, None)
    if after == "released":
        cache.release(prepared.handle)
    else:
        del cache
        gc.collect()
    _save_other_weights(ckpt)
    fp32 = prepared.fp32()
    assert (fp32.dtype, prepared.handle.dtype) == (torch.float32, torch.bfloat16)
    x = torch.rand(1, 3, 20, 24)
    assert torch.equal(fp32.infer(x), want.infer(x))
