"""Interlaced input (broadcast, DVD, camcorders): each coded frame holds two fields from two
moments. Upscaled as it is decoded, the model sharpens the combing of everything that moves
(ANCHORS.md: "interlaced sources upscaled with combing"). vsr deinterlaces it first (bwdif,
one progressive frame per frame) unless told not to, and a segmented batch gives the same
frames as one upscale."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import make_clip

from vsr.io.info import EXACT_RGB
from vsr.io.source import Deinterlacer, PyAVSource, frame_time_base
from vsr.jobs import BatchConfig, JobOptions, run_batch
from vsr.upscale import UpscaleConfig, upscale_file

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg program")

_MOVING = ["-f", "lavfi", "-i", "testsrc2=s=160x120:r=50:d=1.2"]  # 60 frames at 50p, moving


@pytest.fixture(scope="module")
def interlaced(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """25i made from 50p as a camera does (the top field from frame 2k, the bottom one from
    2k+1), coded losslessly as interlaced H.264 with a keyframe every 6 frames; and the 50p
    frames it was made from."""
    d = tmp_path_factory.mktemp("interlaced")
    path, prog = d / "i25.mp4", d / "p50.mkv"
    for args in (["-vf", "interlace=scan=tff:lowpass=0", "-c:v", "libx264", "-qp", "0",
                  "-preset", "ultrafast", "-flags", "+ilme+ildct", "-x264opts", "tff=1",
                  "-g", "6", "-pix_fmt", "yuv420p", str(path)],
                 ["-c:v", "ffv1", str(prog)]):
        subprocess.run(["ffmpeg", "-v", "error", "-y", *_MOVING, *args], check=True)
    with av.open(str(prog)) as c:
        frames = [f.to_ndarray(format="rgb24", interpolation=EXACT_RGB)  # as vsr reads them
                  for f in c.decode(video=0)]
    return path, frames


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse))


def test_interlaced_frames_come_out_deinterlaced(interlaced):
    """Each frame handed out is one moment (the top field's), not two woven together: it is
    far closer to the progressive frame that field came from. Same count, same timestamps."""
    path, progressive = interlaced
    got = {}
    for deinterlace in (True, False):
        with PyAVSource(path, deinterlace=deinterlace) as src:
            frames = list(src.frames())
            got[deinterlace] = frames
            assert src.info.interlaced == (None if deinterlace else "top field first")
    assert len(got[True]) == len(got[False]) == 30
    assert [f.pts for f in got[True]] == [f.pts for f in got[False]]
    closer = [_psnr(a.image, progressive[2 * i]) - _psnr(b.image, progressive[2 * i])
              for i, (a, b) in enumerate(zip(got[True], got[False], strict=True))]
    # measured: +0.52 dB at the first frame (no field before it), +2.6 dB on average (with
    # swscale's biased fast conversion, here and in the reference, it read +2.3 and +5.8)
    assert min(closer) > 0.3 and np.mean(closer) > 1.5, closer


def test_progressive_input_is_judged_progressive(tmp_path, caplog):
    """Progressive video (no field order, frames not flagged) is neither filtered nor warned
    of: the source says so when asked not to deinterlace, and the frames are the same."""
    clip = make_clip(tmp_path / "p.mp4", frames=6)
    caplog.set_level(logging.INFO, logger="vsr")
    with PyAVSource(clip) as a, PyAVSource(clip, deinterlace=False) as b:
        assert b.info.interlaced is None
        assert all(np.array_equal(x.image, y.image)
                   for x, y in zip(a.frames(), b.frames(), strict=True))
    assert not [r for r in caplog.records if "interlaced" in r.getMessage()]


def test_a_segmented_batch_deinterlaces_as_one_upscale_does(interlaced, tmp_path):
    """bwdif looks one frame back and one ahead: a segment starting at a keyframe decodes from
    the keyframe before, so its first frame is made from the same neighbours as in one run."""
    path, _ = interlaced
    whole = tmp_path / "whole.mkv"
    upscale_file(UpscaleConfig(input=path, output=whole, model="bicubic", scale=2,
                               encode=JobOptions(codec="ffv1").encode))
    result = run_batch(BatchConfig(inputs=(str(path),), output_dir=tmp_path / "b",
                                   template="{stem}.mkv",
                                   options=JobOptions(model="bicubic", scale=2, codec="ffv1"),
                                   devices=("cpu",), segment_frames=6))
    assert not result.failed and result.segments_computed == 5
    with av.open(str(whole)) as a, av.open(str(tmp_path / "b" / "i25.mkv")) as b:
        mine = [f.to_ndarray(format="rgb24") for f in a.decode(video=0)]
        theirs = [f.to_ndarray(format="rgb24") for f in b.decode(video=0)]
    assert len(mine) == len(theirs) == 30
    assert all(np.array_equal(x, y) for x, y in zip(mine, theirs, strict=True))


@pytest.mark.parametrize("how", ["upscale", "batch"])
def test_without_deinterlacing_the_combing_is_warned_of_once(interlaced, tmp_path, caplog, how):
    path, _ = interlaced
    caplog.set_level(logging.WARNING, logger="vsr")
    for deinterlace in (True, False):
        caplog.clear()
        if how == "batch":
            result = run_batch(BatchConfig(
                inputs=(str(path),), output_dir=tmp_path / f"b{deinterlace}",
                options=JobOptions(model="bicubic", scale=2, deinterlace=deinterlace),
                devices=("cpu",), segment_frames=6))
            assert not result.failed
        else:
            upscale_file(UpscaleConfig(input=path, output=tmp_path / f"u{deinterlace}.mp4",
                                       model="bicubic", scale=2, deinterlace=deinterlace))
        said = [r.getMessage() for r in caplog.records if "interlaced" in r.getMessage()]
        if deinterlace:
            assert said == []
        else:
            assert len(said) == 1 and "i25.mp4" in said[0] and "top field first" in said[0]


def _decoded(path: Path) -> tuple[list[np.ndarray], list[int]]:
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    return [f.to_ndarray(format="rgb24") for f in frames], [f.pts for f in frames]


@pytest.mark.parametrize("deinterlace", [True, False])
def test_a_live_interlaced_source_is_deinterlaced_as_a_file_is(interlaced, tmp_path,
                                                               deinterlace):
    """`vsr stream` (broadcast TS is often 1080i) gives the frames `vsr upscale` gives, the
    last one too (bwdif holds one back until the source ends); --no-deinterlace warns once."""
    path, _ = interlaced
    ts = tmp_path / "i25.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(path), "-c", "copy", str(ts)],
                   check=True)
    flag = [] if deinterlace else ["--no-deinterlace"]
    live, whole = tmp_path / "live.mkv", tmp_path / "whole.mkv"
    result = subprocess.run([sys.executable, "-m", "vsr", "stream", str(ts), str(live),
                             "--model", "bicubic", "--scale", "2", "--device", "cpu",
                             "--deflicker", "0", "--codec", "ffv1", "--drop", "none", *flag],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("interlaced source") == (0 if deinterlace else 1), result.stderr
    upscale_file(UpscaleConfig(input=ts, output=whole, model="bicubic", scale=2,
                               encode=JobOptions(codec="ffv1").encode, deinterlace=deinterlace))
    (mine, mine_pts), (theirs, _) = _decoded(whole), _decoded(live)
    assert len(mine) == len(theirs) == 30 and len(set(np.diff(mine_pts))) == 1
    assert all(np.array_equal(x, y) for x, y in zip(mine, theirs, strict=True))


def test_the_deinterlacer_time_base_is_one_rule_from_the_stream(interlaced, tmp_path):
    """The time base the deinterlacer runs on was a guess where the stream gave none: 1/25
    for files, 1/90000 for live streams. It is now one rule, vsr.io.source.frame_time_base:
    the stream's time base, else one frame of its codec's frame rate (1/90000 only where
    nothing says); the source describes its frames with the same one."""
    path, _ = interlaced
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        tb = stream.time_base
        assert tb and frame_time_base(stream) == tb
        deinterlacer = Deinterlacer(frame_time_base(stream))
        out = list(deinterlacer.frames(c.decode(stream)))
    assert len(out) == 30 and {f.time_base for f in out} == {tb}
    with PyAVSource(path) as src:
        assert src.info.time_base == tb
        assert [f.pts for f in src.frames()] == [f.pts for f in out]
    # a stream that has no time base yet (a muxer's, before its header): its codec's rate
    with av.open(str(tmp_path / "live.ts"), "w") as o:
        fresh = o.add_stream("libx264", rate=Fraction(30000, 1001))
        assert fresh.time_base is None
        assert frame_time_base(fresh) == Fraction(1001, 30000)
