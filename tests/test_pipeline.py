import random
import time

import numpy as np
import pytest
import torch

from vsr.errors import PipelineError
from vsr.io.source import Frame
from vsr.models import load_model
from vsr.pipeline import CpuProcessor, run_pipeline
from vsr.tiling import tiled_infer


class _ListSink:
    def __init__(self, fail_at=None):
        self.items, self.fail_at = [], fail_at

    def write(self, image, pts, duration=None):
        if self.fail_at is not None and len(self.items) == self.fail_at:
            raise OSError("disk full")
        time.sleep(random.random() * 0.002)
        self.items.append((image, pts))


def _frames(n, h=8, w=10):
    for i in range(n):
        yield Frame(index=i, pts=1000 + 37 * i, image=np.full((h, w, 3), i % 256, np.uint8))


def test_every_frame_in_order_with_its_pts():
    handle = load_model("bicubic", scale=2)
    sink = _ListSink()
    stats = run_pipeline(_frames(50), CpuProcessor(handle), sink, depth=2)
    assert stats.frames_in == stats.frames_out == 50
    assert [p for _, p in sink.items] == [1000 + 37 * i for i in range(50)]
    assert [int(img[0, 0, 0]) for img, _ in sink.items] == list(range(50))
    assert sink.items[0][0].shape == (16, 20, 3)


def test_sink_failure_stops_the_run():
    with pytest.raises(PipelineError, match="disk full"):
        run_pipeline(_frames(40), CpuProcessor(load_model("bicubic", scale=2)),
                     _ListSink(fail_at=5))


def test_decode_failure_is_raised():
    def broken():
        yield from _frames(3)
        raise ValueError("corrupt packet")

    with pytest.raises(PipelineError, match="corrupt packet"):
        run_pipeline(broken(), CpuProcessor(load_model("bicubic", scale=2)), _ListSink())


def test_a_worker_that_does_not_stop_is_named_with_where_it_is(monkeypatch, caplog):
    """A run that stops waits STOP_TIMEOUT_S for its threads; one still busy then is logged
    with the line it is on (the Ctrl-C that once took 30 s more said nothing of which)."""
    import threading

    import vsr.pipeline.run as run

    entered, release = threading.Event(), threading.Event()

    class _StuckSink:
        def write(self, image, pts, duration=None):
            entered.set()
            release.wait(10)  # an encoder that does not come back

    def failing():
        yield from _frames(3)
        entered.wait(10)
        raise OSError("read error")

    monkeypatch.setattr(run, "STOP_TIMEOUT_S", 0.3)
    try:
        with pytest.raises(PipelineError, match="read error"):
            run_pipeline(failing(), CpuProcessor(load_model("bicubic", scale=2)), _StuckSink())
    finally:
        release.set()
    said = [r.getMessage() for r in caplog.records if "did not stop" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("vsr-encode did not stop within 0.3 s (at "), said
    assert "test_pipeline.py:" in said[0] and "in write)" in said[0], said


def test_tiles_match_whole_frame():
    handle = load_model("bicubic", scale=2)
    x = torch.rand(1, 3, 70, 90)
    with torch.inference_mode():
        whole = handle.infer(x)
        tiled = tiled_infer(handle.infer, x, 2, tile=32, overlap=8)
    assert tiled.shape == whole.shape
    assert torch.allclose(tiled, whole, atol=1e-5)


class _Fp16Nan:
    """A handle whose reduced-precision output is NaN: the guard must fall back."""

    name, scale, size_multiple, module = "nanny", 2, 1, None
    supported_dtypes = (torch.float32, torch.float16)

    def __init__(self):
        self.device, self.dtype = torch.device("cpu"), torch.float16

    def to(self, device=None, dtype=None):
        self.dtype = dtype or self.dtype
        return self

    def infer(self, x):
        y = torch.nn.functional.interpolate(x.float(), scale_factor=2, mode="nearest")
        return y.fill_(float("nan")).to(x.dtype) if self.dtype != torch.float32 else y


def test_precision_guard_falls_back_to_fp32():
    proc = CpuProcessor(_Fp16Nan())
    sink = _ListSink()
    run_pipeline(_frames(4), proc, sink)
    assert proc.report.fell_back_to_fp32 and proc.report.fallback_frames == 1
    assert [int(img[0, 0, 0]) for img, _ in sink.items] == [0, 1, 2, 3]


def test_guard_runs_only_for_models_that_can_fail(drn_checkpoint):
    from vsr.pipeline import make_processor

    assert make_processor(load_model("bicubic", scale=2))._guard is False
    assert make_processor(load_model(str(drn_checkpoint)))._guard is True
    assert make_processor(load_model(str(drn_checkpoint)), guard=False)._guard is False


def test_network_model_pipeline(drn_checkpoint):
    handle = load_model(str(drn_checkpoint))
    sink = _ListSink()
    run_pipeline(_frames(3, 12, 16), CpuProcessor(handle), sink)
    assert [img.shape for img, _ in sink.items] == [(24, 32, 3)] * 3


@pytest.mark.cuda
def test_cuda_matches_cpu():
    from vsr.pipeline.cuda import CudaProcessor

    frames = list(_frames(5, 40, 48))
    cpu = [img for _, img in
           (next(CpuProcessor(load_model("bicubic", scale=2)).submit(f)) for f in frames)]
    proc = CudaProcessor(load_model("bicubic", scale=2, device="cuda"))
    got = []
    for f in frames:
        got += [img for _, img in proc.submit(f)]
    got += [img for _, img in proc.drain()]
    assert len(got) == 5
    for a, b in zip(cpu, got, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_a_short_batch_is_padded_only_for_a_fixed_shape_backend(drn_checkpoint, tmp_path):
    """--batch 8 on 3 frames computed 8 (the last frame 6 times) when eager runs them: 2.7x
    the work and memory for nothing (5x the time for one 360p picture). A backend built for
    the full batch of this frame size still gets it padded, to run at all."""
    from vsr.backends import EngineCache, prepare_for_frame

    handle = load_model(str(drn_checkpoint))
    seen: list[int] = []
    hook = handle.module.register_forward_hook(lambda m, args, out: seen.append(
        args[0].shape[0]))
    try:
        sink = _ListSink()
        run_pipeline(_frames(11), CpuProcessor(handle, batch=8), sink)
        assert seen == [8, 3] and len(sink.items) == 11
        seen.clear()
        run_pipeline(_frames(2, 12, 12), CpuProcessor(handle, tile=32, batch=4), _ListSink())
        assert seen == [2]
        pytest.importorskip("onnxruntime")
        runner = prepare_for_frame(handle, "onnx", next(_frames(1)).image, batch=4,
                                   cache=EngineCache(tmp_path))
        assert runner.backend == "onnx"
        seen.clear()
        sink = _ListSink()
        run_pipeline(_frames(6), CpuProcessor(handle, runner=runner, batch=4), sink)
        assert seen == [] and len(sink.items) == 6  # both batches (4, 2 + 2) in onnxruntime
        run_pipeline(_frames(2, 12, 12), CpuProcessor(handle, runner=runner, batch=4),
                     _ListSink())
        assert seen == [2]  # another size: eager, unpadded
    finally:
        hook.remove()
