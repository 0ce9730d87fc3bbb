import os

from vsr.bench import BenchConfig, run_bench
from vsr.io.sink import EncodeConfig


def test_bench_reports_every_stage(clip):
    src = clip("b.mp4", frames=8, size=(96, 64))
    r = run_bench(BenchConfig(input=src, model="bicubic", scale=2, device="cpu", frames=6,
                              encode=EncodeConfig(preset="ultrafast")))
    d = r.to_json()
    for key in ("decode_fps", "model_fps", "encode_fps", "pipeline_fps", "serial_fps"):
        assert d[key] > 0
    assert r.frames == 6 and r.size_out == (192, 128)
    # process CPU time per frame of each loop: positive, and at most every core busy all along
    cores = os.cpu_count() or 1
    assert 0 < d["pipeline_cpu_ms"] <= 1.1 * cores * 1000 / r.pipeline_fps
    assert 0 < d["serial_cpu_ms"] <= 1.1 * cores * 1000 / r.serial_fps


def test_a_clip_shorter_than_the_frames_asked_for_is_said(clip):
    """`vsr bench --frames 100` on a 6-frame clip measured 6 frames without a word."""
    src = clip("short.mp4", frames=3, size=(64, 48))
    r = run_bench(BenchConfig(input=src, model="bicubic", scale=2, device="cpu", frames=10,
                              encode=EncodeConfig(preset="ultrafast")))
    assert r.frames == 3
    assert "the input holds 3 frames, fewer than the 10 asked for: every stage is measured " \
           "on 3" in r.notes


def test_bench_repeats_alternate_and_report_medians(clip):
    src = clip("r.mp4", frames=6, size=(64, 48))
    r = run_bench(BenchConfig(input=src, model="bicubic", scale=2, device="cpu", frames=4,
                              repeats=3, encode=EncodeConfig(preset="ultrafast")))
    assert len(r.pipeline_runs) == len(r.serial_runs) == 3
    assert r.pipeline_fps == sorted(r.pipeline_runs)[1]
    assert r.serial_fps == sorted(r.serial_runs)[1]
    assert r.to_json()["serial_runs"] == list(r.serial_runs)


def test_bench_output_is_never_replaced_without_overwrite(clip, tmp_path):
    import av
    import pytest

    from vsr.errors import OutputError

    src = clip("b.mp4", frames=4, size=(64, 48))
    kept = tmp_path / "kept.mkv"
    kept.write_bytes(b"someone's file")
    cfg = dict(input=src, model="bicubic", scale=2, device="cpu", frames=3,
               encode=EncodeConfig(preset="ultrafast"), output=kept)
    with pytest.raises(OutputError):
        run_bench(BenchConfig(**cfg))
    assert kept.read_bytes() == b"someone's file"
    run_bench(BenchConfig(**cfg, overwrite=True))
    with av.open(str(kept)) as c:
        assert c.streams.video[0].codec_context.width == 128


def _still_then_noise(path, frames: int = 40, size: tuple[int, int] = (320, 240)):
    """Four identical frames, then noise: costly to encode, unless only the first four are."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    w, h = size
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        v.codec_context.options = {"preset": "ultrafast", "crf": "0"}
        still = rng.integers(0, 256, (h, w, 3), np.uint8)
        for i in range(frames):
            img = still if i < 4 else rng.integers(0, 256, (h, w, 3), np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
    return path


def test_encode_stage_encodes_each_frames_own_output(tmp_path, monkeypatch):
    """The encode stage wrote the model's first four outputs over and over: on this clip (four
    still frames, then noise) it encoded 40 copies of one still picture and reported 64 fps
    where the pipeline, held up by that very encoder, made 10 (6.5x). It now encodes each
    frame's own upscaled image, with its own timestamp (the real sink, its writes recorded)."""
    import hashlib

    from vsr.io.sink import PyAVSink

    written: list[tuple[str, int]] = []
    real_write = PyAVSink.write

    def write(self, image, pts, duration=None):
        if self.path.name.startswith("encode"):
            written.append((hashlib.sha1(image.tobytes()).hexdigest(), pts))
        real_write(self, image, pts)

    monkeypatch.setattr(PyAVSink, "write", write)
    src = _still_then_noise(tmp_path / "noise.mp4")
    r = run_bench(BenchConfig(input=src, model="bicubic", scale=2, device="cpu", frames=40))
    assert r.frames == 40 and len(written) == 40
    step = written[1][1] - written[0][1]  # the file's frame duration in its time base
    assert step > 0 and [pts for _, pts in written] == [written[0][1] + i * step
                                                        for i in range(40)]
    assert len({digest for digest, _ in written}) == 37  # the still once, 36 noise frames


def test_a_bad_model_fails_before_any_stage_is_measured(clip):
    """--model was loaded only after every frame had been decoded (and held in memory): a
    misspelt name failed after the decode stage was reported, however many --frames."""
    import pytest

    from vsr.errors import ModelError

    src = clip("b.mp4", frames=6, size=(64, 48))
    stages = []
    with pytest.raises(ModelError, match="unknown model 'drn-t-x2-drc5'"):
        run_bench(BenchConfig(input=src, model="drn-t-x2-drc5", device="cpu", frames=4),
                  lambda stage, fps: stages.append(stage))
    assert stages == []


def test_frames_held_in_memory_are_bounded():
    """A bench holds the decoded frames and their outputs for the model and encode stages:
    all of them, to the budget; a 4K bench over 10,000 frames holds a few dozen, not 300 GB."""
    from vsr.bench import HOLD_BYTES, frames_held

    assert frames_held(64 * 48, 128 * 96, 1, 30) == 30
    per_frame = 3 * (3840 * 2160 + 7680 * 4320)
    assert 4 <= frames_held(3840 * 2160, 7680 * 4320, 1, 10_000) <= max(4, HOLD_BYTES // per_frame)


def test_a_bench_stopped_by_a_signal_leaves_no_files(clip, tmp_path):
    """`timeout 60 vsr bench ... --output k.mkv` sends SIGTERM: it killed the bench outright,
    leaving a hidden partial of k.mkv and the encode stages' folder in the temp dir. Now it
    stops as Ctrl-C does: both removed, one `Error:` line, exit 143."""
    import signal
    import subprocess
    import sys
    import time

    src = clip("long.mp4", frames=100, size=(192, 144))
    out_dir, tmp = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    tmp.mkdir()
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "vsr", "bench", "--input", str(src), "--model", "bicubic",
             "--scale", "4", "--device", "cpu", "--frames", "100", "--output",
             str(out_dir / "k.mkv")], stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TMPDIR": str(tmp)})
        deadline = time.monotonic() + 120
        while not any(".partial" in p.name for p in out_dir.iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        assert err.strip().splitlines()[-1].startswith("Error: interrupted"), err
        assert list(out_dir.iterdir()) == [] and list(tmp.glob("vsr-bench-*")) == [], err



def _bench_recorded(monkeypatch, config: BenchConfig) -> tuple[object, dict[str, list]]:
    """run_bench(config) with, per stage, the batch sizes the prepared runner computed (the
    calls between one stage's report and the next's) and, per sink, the frames written as
    (pts, digest): the real runner and sinks do the work, their calls are recorded."""
    import hashlib

    from vsr.backends.base import Runner
    from vsr.io.sink import PyAVSink

    seen: dict[str, list] = {"before decode": []}
    current = seen["before decode"]
    real_call, real_write = Runner.__call__, PyAVSink.write

    def call(self, x):
        current.append(int(x.shape[0]))
        return real_call(self, x)

    def write(self, image, pts, duration=None):
        name = self.path.name.split(".")[0].rstrip("0123456789")
        seen.setdefault(name, []).append((pts, hashlib.sha1(image.tobytes()).hexdigest()))
        real_write(self, image, pts)

    def report(stage: str, fps: float) -> None:
        nonlocal current
        current = seen.setdefault(f"after {stage}", [])

    monkeypatch.setattr(Runner, "__call__", call)
    monkeypatch.setattr(PyAVSink, "write", write)
    return run_bench(config, report), seen


def test_every_stage_writes_each_frame_once_with_batches(clip, monkeypatch):
    """With --batch 2 the serial loop drained the processor before each frame went in
    (itertools.chain called drain() at once), so each frame was computed alone, padded to the
    backend's batch of 2 (--batch 8: eight times the work), and the last frame was never
    computed nor written; the warm-up frame stayed pending, entered the timed model stage and
    shifted its outputs by one, so the encode stage wrote frame 0's image twice and never the
    last one's. Every stage now computes the pipeline's batches and writes each frame's own
    image once."""
    src = clip("s.mp4", frames=4, size=(64, 48))
    result, seen = _bench_recorded(monkeypatch, BenchConfig(
        input=src, model="drn-t-x2", device="cpu", precision="fp32", backend="onnx",
        batch=2, frames=4, encode=EncodeConfig(preset="ultrafast")))
    assert result.backend == "onnx" and result.batch == 2
    assert len(seen["pipeline"]) == 4 and len({d for _, d in seen["pipeline"]}) == 4
    assert seen["encode"] == seen["pipeline"] == seen["serial"]
    assert seen["after encode"] == [2, 2]  # the pipeline run
    assert seen["after pipeline"] == [2, 2]  # the serial run: the same batches


def test_a_batch_over_the_frames_is_held_to_them_in_every_stage(clip, monkeypatch):
    """--batch 4 on a 3-frame clip: the pipeline ran batches of 3 (run_source holds the batch
    to the frames) while the model and serial stages padded each 3 to 4 on a backend built
    for them, and the result said batch 4. Every stage now runs the batch of 3 it reports."""
    src = clip("s.mp4", frames=3, size=(64, 48))
    result, seen = _bench_recorded(monkeypatch, BenchConfig(
        input=src, model="drn-t-x2", device="cpu", precision="fp32", backend="onnx",
        batch=4, frames=5, encode=EncodeConfig(preset="ultrafast")))
    assert result.batch == 3 and result.backend == "onnx"
    assert seen["after decode"] == [3, 3, 3]  # the check against eager, warm-up, model stage
    assert seen["after encode"] == seen["after pipeline"] == [3]
    assert seen["encode"] == seen["pipeline"] == seen["serial"]


def test_a_fallback_to_fp32_is_reported_and_warned_of_once(clip, tmp_path, caplog):
    """A model whose fp16 output overflows: bench said precision float16 (the cache's shared
    handle stays in fp16 when a run falls back), and each of its runs (model stage, pipeline
    and serial runs) fell back and warned again on its own: five warnings here. It now says
    float32, warns once, and notes the fallback; the stages after it run in fp32 eagerly, as
    a run goes on after its fallback."""
    import logging

    from test_precision import fp16_overflow_checkpoint

    ckpt = fp16_overflow_checkpoint(tmp_path / "wide.safetensors")
    src = clip("b.mp4", frames=4, size=(32, 24))
    with caplog.at_level(logging.WARNING):
        r = run_bench(BenchConfig(input=src, model=str(ckpt), device="cpu", precision="fp16",
                                  frames=4, repeats=2, encode=EncodeConfig(preset="ultrafast")))
    said = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert said == ["frame 0: non-finite or black output in float16; recomputing in fp32 and "
                    "staying in fp32"]
    assert r.precision == "float32" and r.backend == "eager" and r.frames == 4
    assert r.notes == (said[0], "the model stage fell back to fp32: every stage after it ran "
                                "in fp32, eagerly, as a run goes on after its fallback")
