"""`vsr eval` on hostile or odd input: each test here failed before the fix it names."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vsr.errors import ConfigError, InputError
from vsr.evaluate import DatasetResult, evaluate_dataset, evaluate_image
from vsr.imageio import write_image
from vsr.resize import imresize, to_uint8


class StandInBicubic:
    """The bicubic baseline as the handle contract defines it: imresize on 0..255, rounded."""

    def __init__(self, scale: int) -> None:
        self.scale = scale

    def upscale(self, x: torch.Tensor) -> torch.Tensor:
        return to_uint8(imresize(x.to(torch.float64), self.scale))


def _strict_json(text: str) -> dict:
    """json.loads that refuses Infinity, -Infinity and NaN, as strict JSON parsers do."""
    def refuse(token: str) -> None:
        raise ValueError(f"not strict JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def _write_png(path: Path, array: np.ndarray, fmt: str, pix_fmt: str) -> Path:
    """One PNG of ``array`` (given in PyAV format ``fmt``) stored as ``pix_fmt``."""
    frame = av.VideoFrame.from_ndarray(array, format=fmt)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = array.shape[1], array.shape[0], pix_fmt
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return path


def _smooth(shape: tuple[int, ...], peak: int, seed: int = 3) -> np.ndarray:
    """A smooth random picture (something bicubic scores in a sensible range), 0..peak."""
    gen = torch.Generator().manual_seed(seed)
    h, w, *c = shape
    coarse = torch.rand(*(c or [1]), h // 4 + 1, w // 4 + 1, generator=gen, dtype=torch.float64)
    fine = imresize(coarse * peak, size=(h, w)).clamp(0, peak).round()
    dtype = np.uint16 if peak > 255 else np.uint8
    out = fine.permute(1, 2, 0).numpy().astype(dtype)
    return out if c else out[..., 0]


def test_raw_gray_reads_each_file_once(tmp_path, monkeypatch):
    """`vsr eval --raw-gray` opened every image twice (once to ask whether it is gray, once
    for its pixels): a file replaced in between was scored with one file's format and the
    other's pixels. Now one decode gives both."""
    import vsr.imageio

    folder = tmp_path / "Set" / "HR"
    folder.mkdir(parents=True)
    _write_png(folder / "gray.png", _smooth((40, 36), 255), "gray", "gray")
    write_image(folder / "rgb.png", torch.from_numpy(_smooth((36, 40, 3), 255)).permute(2, 0, 1))
    opened: list[str] = []
    real_open = vsr.imageio.open_limited

    def counting_open(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(vsr.imageio, "open_limited", counting_open)
    raw = evaluate_dataset(StandInBicubic(2), tmp_path / "Set", 2, raw_gray=True)
    assert sorted(opened) == ["gray.png", "rgb.png"], opened
    on_y = evaluate_dataset(StandInBicubic(2), tmp_path / "Set", 2)
    # the gray file is scored on its gray values under raw_gray, the RGB one on Y either way
    assert raw.per_image[0].psnr != on_y.per_image[0].psnr
    assert raw.per_image[1] == on_y.per_image[1]


def test_16_bit_png_is_rounded_to_8_bits_not_dithered(tmp_path):
    """A 16-bit HR PNG was brought to 8 bits by FFmpeg's RGB conversion, which dithers: about
    half the samples came out one or two levels off round(v / 257) (MATLAB's im2uint8, and what
    `vsr eval --video` does with deep frames), so the reference itself was noisy and a perfect
    upscaler could not score inf. vsr.imageio.read_image (training data too) now rounds."""
    deep = _smooth((40, 48, 3), 65000) + np.uint16(77)  # not multiples of 257: the test bites
    folder = tmp_path / "Deep"
    folder.mkdir()
    _write_png(folder / "deep.png", deep, "rgb48le", "rgb48be")
    _write_png(folder / "gray16.png", deep[..., 1].copy(), "gray16le", "gray16be")
    want = torch.from_numpy(np.floor(deep / 257.0 + 0.5).astype(np.uint8)).permute(2, 0, 1)
    from vsr.imageio import read_image

    assert torch.equal(read_image(folder / "deep.png"), want)  # training reads it so too
    result = evaluate_dataset(StandInBicubic(2), folder, 2)
    expected = evaluate_image(StandInBicubic(2), want, 2)
    assert (result.per_image[0].psnr, result.per_image[0].ssim) == expected
    gray = want[1:2].expand(3, -1, -1)
    assert (result.per_image[1].psnr, result.per_image[1].ssim) == \
        evaluate_image(StandInBicubic(2), gray, 2)


def test_json_has_no_infinity_when_an_image_scores_perfectly(tmp_path):
    """A flat image (bicubic reproduces it exactly) scores inf dB, and `vsr eval --json` printed
    `"psnr": Infinity`, which is not JSON: strict parsers (jq, JavaScript, Go) refused the whole
    output; then null, for the whole set, whatever its other images scored. Such an image now
    counts PSNR_CEILING (60) dB in the set's mean, as a frame does in a clip's; its own figure
    stays inf."""
    from vsr.cli.evaluate import evaluate
    from vsr.metrics import PSNR_CEILING

    folder = tmp_path / "Flat"
    folder.mkdir()
    write_image(folder / "flat.png", torch.full((3, 32, 32), 120, dtype=torch.uint8))
    write_image(folder / "smooth.png",
                torch.from_numpy(_smooth((32, 32, 3), 255)).permute(2, 0, 1))
    result = evaluate_dataset(StandInBicubic(2), folder, 2)
    flat, smooth = (r.psnr for r in result.per_image)
    assert flat == math.inf and 20 < smooth < PSNR_CEILING
    assert result.psnr == pytest.approx((PSNR_CEILING + smooth) / 2)
    res = CliRunner().invoke(evaluate, ["-d", str(folder), "-s", "2", "--baseline", "bicubic",
                                        "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    row = _strict_json(res.stdout)["results"][0]
    assert row["psnr"] == pytest.approx(result.psnr, abs=1e-4) and row["images"] == 2
    nan = DatasetResult("x", 2, math.nan, math.nan, 1).to_json()
    assert nan["psnr"] is None and nan["ssim"] is None


def test_video_json_has_no_infinity_or_nan():
    """A clip whose frames the model and the baseline both reproduce exactly (black frames)
    gave `Infinity` for psnr and baseline_psnr and `NaN` for gain_psnr (inf - inf) in
    `vsr eval --video --json`."""
    from vsr.video_eval import ClipResult, Scores, summarize_video

    perfect = Scores(math.inf, 1.0, 0.0)
    row = ClipResult("black", 2, 4, "bicubic", "bicubic", perfect, perfect).to_json()
    text = json.dumps(summarize_video([ClipResult("black", 2, 4, "bicubic", "bicubic", perfect,
                                                  perfect)]), allow_nan=False)
    assert _strict_json(text)["results"][0] == row
    assert row["psnr"] is None and row["baseline_psnr"] is None and row["gain_psnr"] is None
    assert row["ssim"] == 1.0 and row["flicker"] == 0.0


def test_broken_link_in_a_benchmark_folder_is_an_error(tmp_path):
    """A dangling symlink named like an image was skipped without a word: the set was scored
    on one image fewer and its mean reported as the set's."""
    folder = tmp_path / "Set"
    folder.mkdir()
    write_image(folder / "a.png", torch.from_numpy(_smooth((32, 32, 3), 255)).permute(2, 0, 1))
    (folder / "b.png").symlink_to(tmp_path / "gone.png")
    (folder / "notes.txt").write_text("not an image, ignored")
    with pytest.raises(InputError, match=r"b\.png is a broken link"):
        evaluate_dataset(StandInBicubic(2), folder, 2)
    (folder / "b.png").unlink()
    (folder / "b.png").symlink_to(folder / "a.png")  # a link that resolves is an image
    assert evaluate_dataset(StandInBicubic(2), folder, 2).images == 2


@pytest.mark.parametrize(("args", "words"), [
    (["--raw-gray"], "--raw-gray applies to image eval"),
])
def test_image_only_options_with_video_are_refused(tmp_path, args, words):
    """`vsr eval --video CLIP --raw-gray` ran and ignored --raw-gray without a word."""
    from vsr.cli.evaluate import evaluate

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")  # never opened: the options are checked first
    res = CliRunner().invoke(evaluate, ["--video", str(clip), "-s", "2", "--model", "bicubic",
                                        "--device", "cpu", *args])
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError)
    assert words in str(res.exception)


@pytest.mark.parametrize("frames", ["4", "16"])
def test_frames_with_image_sets_is_refused(tmp_path, frames):
    """`vsr eval --data SET --frames 4` scored every image and ignored --frames without a word
    (as --degrade and --seed were refused with --data, --frames was not)."""
    from vsr.cli.evaluate import evaluate

    folder = tmp_path / "Set"
    folder.mkdir()
    write_image(folder / "a.png", torch.from_numpy(_smooth((32, 32, 3), 255)).permute(2, 0, 1))
    res = CliRunner().invoke(evaluate, ["-d", str(folder), "-s", "2", "--baseline", "bicubic",
                                        "--device", "cpu", "--frames", frames])
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError)
    assert "--frames" in str(res.exception) and "apply to --video" in str(res.exception)


@pytest.mark.parametrize("seed", [2 ** 64, 10 ** 30, -1, True])
def test_video_seed_out_of_range_is_a_config_error(tmp_path, seed):
    """`vsr eval --video CLIP --seed 99999999999999999999999` ended in `Error: internal error:
    ValueError: Overflow when unpacking long long` (torch's seed is 64 bits)."""
    from vsr.degradations import DegradationChain
    from vsr.video_eval import VideoEvalConfig

    clip = tmp_path / "clip.mp4"
    with pytest.raises(ConfigError, match="seed must be an integer from 0 to 2\\*\\*64 - 1"):
        VideoEvalConfig(videos=(clip,), degrade="bicubic,noise:sigma=2", model="bicubic",
                        scale=2, seed=seed)
    hr = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    if seed is not True:  # the library call takes anything int() takes, as before
        with pytest.raises(ConfigError, match="seed must be"):
            DegradationChain.parse("bicubic,noise:sigma=2").apply_clip(hr, 2, seed=seed)
    top = DegradationChain.parse("bicubic,noise:sigma=2").apply_clip(hr, 2, seed=2 ** 64 - 1)
    assert top.shape == (2, 3, 4, 4)


def test_video_seed_out_of_range_cli_is_one_line(tmp_path, monkeypatch, capsys):
    from vsr.cli.main import main

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    monkeypatch.setattr("sys.argv", ["vsr", "eval", "--video", str(clip), "--model", "bicubic",
                                     "-s", "2", "--device", "cpu", "--seed", str(10 ** 30)])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: seed must be") and "internal error" not in err, err


@pytest.mark.parametrize("spec", ["bicubic,noise:sigma=1.23456789",
                                  "blur:sigma=0.3~0.123456789e1,bicubic",
                                  "bicubic,noise:sigma=2:p=0.123456789"])
def test_degrade_spec_values_are_kept_exactly(tmp_path, spec):
    """`vsr eval --video CLIP --degrade bicubic,noise:sigma=1.23456789` ran with sigma 1.23457:
    the config keeps the canonical spec string, which wrote values with 6 significant digits,
    and the run re-parsed that string; the JSON "degrade" field named the rounded value too."""
    from vsr.degradations import DegradationChain
    from vsr.video_eval import VideoEvalConfig

    asked = DegradationChain.parse(spec)
    config = VideoEvalConfig(videos=(tmp_path / "clip.mp4",), degrade=spec, model="bicubic",
                             scale=2, seed=1)
    assert config.chain == asked
    assert DegradationChain.parse(str(asked)) == asked
    hr = torch.from_numpy(_smooth((16, 16, 3), 255)).permute(2, 0, 1).expand(2, -1, -1, -1)
    assert torch.equal(config.chain.apply_clip(hr, 2, seed=1), asked.apply_clip(hr, 2, seed=1))


def test_unlistable_benchmark_folder_is_an_input_error(tmp_path, monkeypatch, capsys):
    """A benchmark folder the user may not list (another user's, mode 700) ended in `Error:
    internal error: PermissionError: [Errno 13] Permission denied`."""
    from vsr.cli.main import main

    folder = tmp_path / "Locked"
    (folder / "HR").mkdir(parents=True)
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self.name == "HR":  # what listing a folder without read permission does
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(InputError, match="cannot list benchmark folder .*: Permission denied"):
        evaluate_dataset(StandInBicubic(2), folder, 2)
    monkeypatch.setattr("sys.argv", ["vsr", "eval", "-d", str(folder), "-s", "2",
                                     "--baseline", "bicubic", "--device", "cpu"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: cannot list benchmark folder") and "internal" not in err, err


def test_hidden_files_in_an_image_folder_are_left_out(tmp_path):
    """A benchmark or training folder copied from macOS holds `._NAME.png` (AppleDouble
    metadata) beside each image: `vsr eval -d SET` stopped with 'not an image: ._a.png'.
    Hidden files are left out, as `vsr batch` leaves them out."""
    from vsr.imageio import list_images

    folder = tmp_path / "Set"
    folder.mkdir()
    write_image(folder / "a.png", torch.from_numpy(_smooth((36, 40, 3), 255)).permute(2, 0, 1))
    (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble metadata")
    assert list_images(folder) == [folder / "a.png"]
    result = evaluate_dataset(StandInBicubic(2), folder, 2)
    assert [r.name for r in result.per_image] == ["a.png"]
