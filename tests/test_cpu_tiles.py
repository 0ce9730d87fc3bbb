"""CPU runs tile frames whose activations would not fit in memory: a large picture under the
pixel limit (a 143 KB black 7000x7000 PNG) would need about 37 GB whole with the default model
(extrapolated from two smaller pictures), more than the machine had; only a CUDA out-of-memory
tiled before."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vsr.tiling
from vsr import load_model
from vsr.upscale import UpscaleConfig, upscale_file


def _picture(path: Path, size: tuple[int, int] = (160, 120)) -> Path:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _run(src: Path, out: Path, **options):
    return upscale_file(UpscaleConfig(input=src, output=out, model="drn-t-x2-drc50",
                                      device="cpu", precision="fp32", **options))


def test_a_frame_too_large_for_memory_is_upscaled_in_tiles(tmp_path, monkeypatch, caplog):
    src = _picture(tmp_path / "in.png")
    whole = _run(src, tmp_path / "whole.png")
    assert whole.tile is None
    module = load_model("drn-t-x2-drc50", device="cpu", precision="fp32").module
    per_pixel = vsr.tiling.activation_bytes_per_pixel(module, torch.float32)
    # as if the machine had memory for a quarter of this frame's activations, twice over
    monkeypatch.setattr(vsr.tiling, "available_bytes", lambda device: per_pixel * 160 * 120 / 2)
    with caplog.at_level(logging.WARNING, logger="vsr.tiling"):
        tiled = _run(src, tmp_path / "tiled.png")
    assert tiled.tile is not None and tiled.tile < 120
    [said] = [r.getMessage() for r in caplog.records]
    assert said.startswith("in.png: frames of 160x120 need about") and \
        f"in tiles of {tiled.tile} px (--tile sets the size)" in said
    a = np.asarray(Image.open(tmp_path / "whole.png"), np.int16)
    b = np.asarray(Image.open(tmp_path / "tiled.png"), np.int16)
    assert np.abs(a - b).max() <= 1  # the overlap covers the receptive field


def test_a_given_tile_and_a_frame_that_fits_are_left_as_they_are(tmp_path, monkeypatch):
    src = _picture(tmp_path / "in.png")
    monkeypatch.setattr(vsr.tiling, "available_bytes", lambda device: 1)
    assert _run(src, tmp_path / "given.png", tile=64).tile == 64
    monkeypatch.setattr(vsr.tiling, "available_bytes", lambda device: None)  # not known
    assert _run(src, tmp_path / "unknown.png").tile is None
