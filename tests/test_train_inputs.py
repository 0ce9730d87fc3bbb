"""`vsr train` on careless or hostile training inputs, with real files and real training:
image packs are checked before they are inflated, and a bad option is refused before the
run folder is made."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vsr.cli.main import cli
from vsr.errors import ConfigError, InputError
from vsr.imageio import write_image
from vsr.models import REGISTRY, CheckpointInfo, load_network, save_model
from vsr.train.data import load_image_pack, save_image_pack

torch.set_num_threads(1)


def smooth_image(seed: int, size: int) -> torch.Tensor:
    """A smooth random uint8 (3, size, size) picture (bicubic from 8x8 noise); the tests of
    training and compression make their image folders of these."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 8, generator=g)
    img = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic")[0]
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def _npy(array_or_header: np.ndarray | dict, body: bytes = b"") -> bytes:
    buf = io.BytesIO()
    if isinstance(array_or_header, dict):  # a header alone: what it declares is not there
        np.lib.format.write_array_header_1_0(buf, array_or_header)
        buf.write(body)
    else:
        np.save(buf, array_or_header)
    return buf.getvalue()


def _pack(path: Path, **members: bytes) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__format__.npy", _npy(np.array("vsr-image-pack/1 sub")))
        for name, data in members.items():
            zf.writestr(f"{name}.npy", data)
    return path


def _train(data: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["train", "--arch", "drn-t-x2", "--data", str(data),
                                    "--out", str(out), "--iters", "2", "--batch-size", "2",
                                    "--patch", "8", "--threads", "1", "--json", *extra])


def _refused(got, kind: type, *words: str) -> str:
    assert isinstance(got.exception, kind), (got.output, got.exception)
    message = str(got.exception)
    for word in words:
        assert word in message, message
    return message


def test_an_image_pack_is_checked_against_the_pixel_limit_before_it_is_inflated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 420 KB pack declaring a 144 Mpx image was inflated whole (1.6 GB with the copies):
    packs skipped the VSR_MAX_PIXELS limit that image files have. The .npy headers are read
    first and an image over the limit is refused, nothing allocated for it; the run folder
    is not made."""
    header = {"descr": "|u1", "fortran_order": False, "shape": (3, 12000, 12000)}
    bomb = _pack(tmp_path / "bomb.npz", big=_npy(header, b"\0" * 4096))
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="big declares a 12000x12000 picture "
                                             r"\(144,000,000 pixels\), over the limit"):
            load_image_pack(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20
    _refused(_train(bomb, tmp_path / "run"), InputError, "VSR_MAX_PIXELS")
    assert not (tmp_path / "run").exists()
    # an ordinary pack, with the limit lowered under its 96x96 image (9216 pixels)
    pack = save_image_pack(tmp_path / "ok.npz", {"a": smooth_image(0, 64),
                                                 "b": smooth_image(1, 96)})
    monkeypatch.setenv("VSR_MAX_PIXELS", "5000")
    _refused(_train(pack, tmp_path / "run"), InputError, "b declares a 96x96 picture")
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("VSR_MAX_PIXELS", "10000")
    assert _train(pack, tmp_path / "run").exit_code == 0


@pytest.mark.parametrize("dtype", ["int16", "float64"])
def test_an_image_pack_of_another_dtype_is_refused(tmp_path: Path, dtype: str) -> None:
    """The differences of a pack's images were summed in uint8 whatever their dtype: an
    int16 or float pack trained on garbage or black images, exit 0."""
    pixels = smooth_image(0, 64).numpy().astype(dtype)
    pack = _pack(tmp_path / "p.npz", a=_npy(pixels))
    _refused(_train(pack, tmp_path / "run"), InputError, f"a is {dtype} (3, 64, 64)",
             "not uint8 (3, H, W)")
    assert not (tmp_path / "run").exists()


def test_a_folder_of_images_still_trains(tmp_path: Path) -> None:
    (tmp_path / "hr").mkdir()
    write_image(tmp_path / "hr" / "a.png", smooth_image(0, 64))
    got = _train(tmp_path / "hr", tmp_path / "run")
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout.strip().splitlines()[-1])["steps"] == 2


def test_weights_beyond_float16_leave_no_broken_fp16_file(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    """A weight over 65504 became infinity in model-fp16.safetensors, a file no loader takes,
    and training exited 0 saying nothing. Now that file is not written (nor one of an earlier
    slot kept), a warning names the weight, and --json says "fp16_model": false."""
    (tmp_path / "hr").mkdir()
    write_image(tmp_path / "hr" / "a.png", smooth_image(0, 64))
    torch.manual_seed(0)
    net = REGISTRY.get("drn-t-x2").build()
    with torch.no_grad():
        net.tails[1].bias[0] = 1e5  # a bias: the loss stays finite in float32
    init = tmp_path / "big.safetensors"
    save_model(init, net, CheckpointInfo(arch="drn", hparams=net.hparams, scale=2, name="big"))
    run = tmp_path / "run"
    with caplog.at_level("WARNING", logger="vsr.train.trainer"):
        got = CliRunner().invoke(cli, ["train", "--init", str(init), "--data",
                                       str(tmp_path / "hr"), "--out", str(run), "--iters", "2",
                                       "--batch-size", "2", "--patch", "8", "--threads", "1",
                                       "--json"])
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout.strip().splitlines()[-1])["fp16_model"] is False
    assert not (run / "model-fp16.safetensors").exists()
    assert "model-fp16.safetensors not written: tails.1.bias holds a weight of magnitude " \
        "1e+05, beyond float16's 65504" in caplog.text
    assert load_network(run / "last.safetensors")[0].tails[1].bias.abs().max() > 65504
    # a run of ordinary weights writes it, and says so
    got = _train(tmp_path / "hr", tmp_path / "ok")
    assert json.loads(got.stdout.strip().splitlines()[-1])["fp16_model"] is True
    assert load_network(tmp_path / "ok" / "model-fp16.safetensors")[0] is not None


def test_a_seed_out_of_range_is_refused_before_the_run_folder_is_made(tmp_path: Path) -> None:
    """--seed 10000000000000 ended in 'internal error: ValueError: Overflow' with config.json
    left in the new run folder (and vsr compress likewise); seeds are 0 to 2**31 - 1."""
    (tmp_path / "hr").mkdir()
    write_image(tmp_path / "hr" / "a.png", smooth_image(0, 64))
    for seed in ("10000000000000", str(2**31)):
        _refused(_train(tmp_path / "hr", tmp_path / "run", "--seed", seed), ConfigError,
                 f"seed must be at most 2147483647 (2**31 - 1), got {seed}")
        assert not (tmp_path / "run").exists()
    ckpt = tmp_path / "c.safetensors"
    net = REGISTRY.get("drn-t-x2").build()
    save_model(ckpt, net, CheckpointInfo(arch="drn", hparams=net.hparams, scale=2, name="c"))
    got = CliRunner().invoke(cli, ["compress", "--checkpoint", str(ckpt), "--ratio", "0.5",
                                   "--data", str(tmp_path / "hr"), "--out", str(tmp_path / "c"),
                                   "--seed", "10000000000000"])
    _refused(got, ConfigError, "seed must be at most 2147483647")
    assert not (tmp_path / "c").exists()
    got = _train(tmp_path / "hr", tmp_path / "run", "--seed", str(2**31 - 1))
    assert got.exit_code == 0, got.output


def test_skipped_training_images_are_warned_of_with_the_count(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Images smaller than the HR patch are left out: three of four were, said only at INFO
    (not shown without -vv), so the run trained on a quarter of its set without a word."""
    (tmp_path / "hr").mkdir()
    for i in range(3):
        write_image(tmp_path / "hr" / f"small{i}.png", smooth_image(i, 64))
    write_image(tmp_path / "hr" / "large.png", smooth_image(3, 96))
    with caplog.at_level("WARNING", logger="vsr.train.data"):
        got = _train(tmp_path / "hr", tmp_path / "run", "--patch", "40")  # HR patch 80
    assert got.exit_code == 0, got.output
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert [r.getMessage() for r in warned] == [
        "skipped 3 of 4 training images: smaller than the 80 px HR patch"]


def test_a_batch_too_large_for_the_memory_is_refused_before_the_first_step(
        tmp_path: Path) -> None:
    """--batch-size 100000 was killed by the kernel mid-step (exit 137, no Error line,
    config.json left). The activations of a step are estimated from one sample's forward
    pass first and a batch that cannot fit is refused, nothing made. The child runs under
    an address-space limit, so that an unchecked batch fails there rather than the host."""
    (tmp_path / "hr").mkdir()
    write_image(tmp_path / "hr" / "a.png", smooth_image(0, 64))
    child = ("import resource, sys\n"
             "resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))\n"
             "from vsr.cli.main import main\n"
             "sys.argv = ['vsr', *sys.argv[1:]]\n"
             "main()\n")
    run = tmp_path / "run"
    got = subprocess.run([sys.executable, "-c", child, "train", "--arch", "drn-t-x2",
                          "--data", str(tmp_path / "hr"), "--out", str(run), "--iters", "2",
                          "--batch-size", str(10**9), "--patch", "8", "--threads", "1"],
                         capture_output=True, text=True, timeout=120)
    assert got.returncode == 1, got.stderr
    line = got.stderr.strip().splitlines()[-1]
    assert line.startswith(f"Error: a batch of {10**9} patches of 8x8 needs at least "), line
    assert "lower --batch-size or --patch" in line
    assert not run.exists()
