"""Repeated frames are computed once (vsr.pipeline.repeats): the same frames out, in order,
as computing every one, with the repeats counted; through `vsr upscale` on a real clip."""

from __future__ import annotations

import json
import subprocess
import sys

import av
import numpy as np
import pytest

from vsr.io.source import Frame
from vsr.models import load_model
from vsr.pipeline import CpuProcessor
from vsr.pipeline.repeats import RepeatsReused

MODEL = "drn-t-x2-drc50"


def _frames() -> list[Frame]:
    """Drawings held for 1, 2 and 3 frames (animation "on twos"), then a still at the end."""
    rng = np.random.default_rng(3)
    drawings = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(4)]
    held = [0, 1, 1, 2, 2, 2, 3, 0, 0]
    return [Frame(i, 10 * i, drawings[k].copy()) for i, k in enumerate(held)]


def _run(proc, frames: list[Frame]) -> list[tuple[int, np.ndarray]]:
    out = [(f.index, img) for frame in frames for f, img in proc.submit(frame)]
    return out + [(f.index, img) for f, img in proc.drain()]


@pytest.mark.parametrize("batch", [1, 3])  # 3: outputs come out later than their frames
def test_repeats_get_their_originals_output_in_order(batch):
    frames = _frames()
    handle = load_model(MODEL)
    every = _run(CpuProcessor(handle, batch=batch), frames)
    reusing = RepeatsReused(CpuProcessor(handle, batch=batch))
    got = _run(reusing, frames)
    assert [i for i, _ in got] == list(range(len(frames)))
    for (_, a), (_, b) in zip(every, got, strict=True):
        assert np.array_equal(a, b)
    assert reusing.report.reused_frames == 4  # frames 2, 4, 5 and 8


def test_upscale_counts_the_frames_it_did_not_compute_again(tmp_path):
    clip = tmp_path / "twos.mkv"
    with av.open(str(clip), "w") as out:  # lossless: repeated frames decode identical
        st = out.add_stream("ffv1", rate=12)
        st.width, st.height, st.pix_fmt = 32, 24, "yuv420p"
        for f in _frames():
            frame = av.VideoFrame.from_ndarray(f.image, format="rgb24")
            frame.pts = f.index
            out.mux(st.encode(frame))
        out.mux(st.encode(None))
    r = subprocess.run([sys.executable, "-m", "vsr", "upscale", str(clip),
                        str(tmp_path / "out.mkv"), "--model", MODEL, "--codec", "ffv1",
                        "--pix-fmt", "bgr0", "--json"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["frames_out"] == 9 and result["frames_reused"] == 4
    with av.open(str(tmp_path / "out.mkv")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 9
    assert np.array_equal(frames[1], frames[2]) and not np.array_equal(frames[0], frames[1])
