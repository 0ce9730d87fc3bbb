"""vsr.evaluate and `vsr eval`: the benchmark protocol, on synthetic sets and on Set5."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vsr.errors import ConfigError, InputError, ModelError
from vsr.evaluate import (
    EvalConfig,
    benchmark_images,
    degrade,
    evaluate_dataset,
    modcrop,
    run_evaluation,
)
from vsr.imageio import write_image
from vsr.resize import imresize, to_uint8

BENCHMARK = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmark"


class StandInBicubic:
    """The bicubic baseline as the handle contract defines it: imresize on 0..255, rounded."""

    def __init__(self, scale: int) -> None:
        self.scale = scale

    def upscale(self, x: torch.Tensor) -> torch.Tensor:
        return to_uint8(imresize(x.to(torch.float64), self.scale))


class Broken:
    scale = 2

    def upscale(self, x: torch.Tensor) -> torch.Tensor:
        return x  # wrong size


def _make_set(root: Path, sizes=((40, 36), (33, 50)), hr_sub: bool = True) -> Path:
    folder = root / "HR" if hr_sub else root
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(1)
    for i, (h, w) in enumerate(sizes):
        smooth = torch.rand(3, h // 4 + 1, w // 4 + 1, generator=gen, dtype=torch.float64) * 255
        write_image(folder / f"img{i}.png", to_uint8(imresize(smooth, size=(h, w))))
    return root


def test_modcrop_and_degrade_shapes():
    hr = torch.randint(0, 256, (3, 33, 50), dtype=torch.uint8)
    cropped = modcrop(hr, 4)
    assert cropped.shape == (3, 32, 48)
    assert torch.equal(cropped, hr[:, :32, :48])  # top-left kept
    lr = degrade(cropped, 4)
    assert lr.dtype == torch.uint8 and lr.shape == (3, 8, 12)
    with pytest.raises(ValueError):
        degrade(hr, 4)


def test_dataset_folder_resolution(tmp_path):
    _make_set(tmp_path / "Tiny")
    assert benchmark_images(tmp_path / "Tiny")[0] == "Tiny"
    assert benchmark_images(tmp_path / "Tiny" / "HR")[0] == "Tiny"
    _make_set(tmp_path / "Flat", hr_sub=False)
    name, paths = benchmark_images(tmp_path / "Flat")
    assert name == "Flat" and [p.name for p in paths] == ["img0.png", "img1.png"]
    (tmp_path / "Empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        benchmark_images(tmp_path / "Empty")
    with pytest.raises(InputError, match="not found"):
        benchmark_images(tmp_path / "Missing")


def test_evaluate_dataset_means_and_progress(tmp_path):
    _make_set(tmp_path / "Tiny")
    events = []
    result = evaluate_dataset(StandInBicubic(2), tmp_path / "Tiny", 2, progress=events.append)
    assert (result.dataset, result.scale, result.images) == ("Tiny", 2, 2)
    assert [e.index for e in events] == [1, 2] and events[-1].total == 2
    assert [r.name for r in result.per_image] == ["img0.png", "img1.png"]
    assert result.psnr == pytest.approx(sum(r.psnr for r in result.per_image) / 2)
    assert result.ssim == pytest.approx(sum(r.ssim for r in result.per_image) / 2)
    assert 25 < result.psnr < math.inf and 0.5 < result.ssim < 1
    row = result.to_json()
    assert set(row) == {"dataset", "scale", "psnr", "ssim", "images", "precision", "path"}
    assert row["psnr"] == round(result.psnr, 4)
    # two sets of one name (Tiny in two folders) are told apart by the folder given
    assert row["path"] == str(tmp_path / "Tiny")


def test_model_output_contract_is_checked(tmp_path):
    _make_set(tmp_path / "Tiny")
    with pytest.raises(ModelError, match="does not fit"):
        evaluate_dataset(Broken(), tmp_path / "Tiny", 2)


def test_config_validation(tmp_path):
    data = (tmp_path,)
    with pytest.raises(ConfigError, match="exactly one"):
        EvalConfig(data=data, scale=2)
    with pytest.raises(ConfigError, match="exactly one"):
        EvalConfig(data=data, scale=2, model="x", baseline="bicubic")
    with pytest.raises(ConfigError, match="needs --scale"):
        EvalConfig(data=data, baseline="bicubic")
    with pytest.raises(ConfigError, match="unknown baseline"):
        EvalConfig(data=data, scale=2, baseline="lanczos")
    with pytest.raises(ConfigError, match="device"):
        EvalConfig(data=data, scale=2, baseline="bicubic", device="tpu")
    with pytest.raises(ConfigError):
        EvalConfig(data=(), scale=2, baseline="bicubic")
    (tmp_path / "Empty").mkdir()
    config = EvalConfig(data=(tmp_path / "Empty",), scale=2, baseline="bicubic", device="cpu")
    with pytest.raises(InputError, match="no images"):
        run_evaluation(config)


def test_cli_json_and_table(tmp_path):
    pytest.importorskip("vsr.models")
    from vsr.cli.evaluate import evaluate

    a, b = _make_set(tmp_path / "A"), _make_set(tmp_path / "B", sizes=((24, 24),))
    runner = CliRunner()
    res = runner.invoke(evaluate, ["--data", str(a), "--data", str(b / "HR"), "--scale", "2",
                                   "--baseline", "bicubic", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["results"]
    assert [(r["dataset"], r["scale"], r["images"]) for r in rows] == [("A", 2, 2), ("B", 2, 1)]
    assert all(isinstance(r["psnr"], float) and isinstance(r["ssim"], float) for r in rows)
    expected = evaluate_dataset(StandInBicubic(2), a, 2)
    assert rows[0]["psnr"] == pytest.approx(expected.psnr, abs=2e-4)
    res = runner.invoke(evaluate, ["-d", str(a), "-s", "2", "--baseline", "bicubic",
                                   "--device", "cpu"])
    assert res.exit_code == 0
    assert res.stdout.splitlines()[0].split() == ["dataset", "scale", "images", "PSNR", "SSIM"]


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from vsr.cli.main import main

    (tmp_path / "Empty").mkdir()
    monkeypatch.setattr("sys.argv", ["vsr", "eval", "-d", str(tmp_path / "Empty"), "-s", "2",
                                     "--baseline", "bicubic"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: no images") and "\n" not in err


# published MATLAB bicubic figures (PSNR dB, SSIM) on Y, shave = scale
PUBLISHED_SET5 = {4: (28.42, 0.8104), 2: (33.66, 0.9299)}


@pytest.mark.skipif(not (BENCHMARK / "Set5").is_dir(), reason="shared benchmark data absent")
@pytest.mark.parametrize("scale", [4, 2])
def test_set5_bicubic_matches_published(scale):
    psnr, ssim = PUBLISHED_SET5[scale]
    result = evaluate_dataset(StandInBicubic(scale), BENCHMARK / "Set5", scale)
    assert result.images == 5
    assert result.psnr == pytest.approx(psnr, abs=0.03)
    assert result.ssim == pytest.approx(ssim, abs=0.003)


def test_images_too_small_to_score_are_named(tmp_path, monkeypatch, capsys):
    """A 5x5 image ended in `Error: internal error: ValueError: image 4x4 too small to
    shave`: now the image is named with the smallest size the protocol scores."""
    from vsr.cli.main import main

    root = _make_set(tmp_path / "Edge", sizes=((16, 17), (17, 16)))
    edge = evaluate_dataset(StandInBicubic(2), root, 2)  # the smallest that fits still scores
    assert edge.images == 2 and 0 < edge.ssim <= 1
    tiny = _make_set(tmp_path / "Tiny", sizes=((40, 36), (15, 40)))
    with pytest.raises(InputError, match=r"img1\.png is 40x15 pixels, too small to score at "
                                         r"x2: the protocol needs at least 16x16"):
        evaluate_dataset(StandInBicubic(2), tiny, 2)
    monkeypatch.setattr("sys.argv", ["vsr", "eval", "-d", str(tiny), "-s", "2",
                                     "--baseline", "bicubic", "--device", "cpu"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"Error: {tiny / 'HR' / 'img1.png'} is 40x15 pixels") \
        and "\n" not in err and "internal error" not in err, err
    from vsr.evaluate import min_size

    assert [min_size(s) for s in (2, 3, 4)] == [16, 18, 20]  # 11 + 2*scale, up to a multiple


@pytest.mark.parametrize("kind", ["FIFO", "socket", "folder"])
def test_an_image_name_that_is_no_file_is_refused(tmp_path, monkeypatch, cli_error, kind):
    """A FIFO, a socket or a folder named like an image (x.png/) in a benchmark folder was
    skipped without a word: the set was scored on one image fewer and its mean reported as
    the set's (as a broken link was). It is refused, named, and never opened (a FIFO would
    block the run)."""
    import os
    import socket

    root = _make_set(tmp_path / "Tiny")
    odd = root / "HR" / "x.png"
    if kind == "FIFO":
        os.mkfifo(odd)
    elif kind == "folder":
        odd.mkdir()
    else:
        server = socket.socket(socket.AF_UNIX)
        with monkeypatch.context() as m:  # a relative name: a socket's path is 107 bytes at most
            m.chdir(odd.parent)
            server.bind(odd.name)
    with pytest.raises(InputError) as err:
        benchmark_images(root)
    assert str(err.value) == (f"{odd} is a {kind}, not an image file: the set would be "
                              "scored without it")
    with pytest.raises(InputError, match="x.png is"):
        evaluate_dataset(StandInBicubic(2), root, 2)
    assert cli_error("eval", "--data", str(root), "--baseline", "bicubic", "--scale",
                     "2") == f"Error: {err.value}"
    if kind == "socket":
        server.close()
