"""vsr.imageio: PyAV-only still image reading and writing."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from vsr.errors import InputError, OutputError
from vsr.imageio import is_grayscale, list_images, read_image, write_image


def _random_image(h: int = 17, w: int = 23) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)


def _write_gray_png(path, array: np.ndarray) -> None:
    with av.open(str(path), mode="w", format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = array.shape[1], array.shape[0], "gray"
        for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="gray")):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.mark.parametrize("suffix", [".png", ".bmp"])
def test_lossless_round_trip(tmp_path, suffix):
    img = _random_image()
    path = tmp_path / f"a{suffix}"
    write_image(path, img)
    back = read_image(path)
    assert back.dtype == torch.uint8 and back.shape == (3, 17, 23)
    assert torch.equal(back, img)
    assert not is_grayscale(path)


def test_jpeg_round_trip_is_close(tmp_path):
    img = torch.zeros(3, 32, 48, dtype=torch.uint8)
    img[0] = 200
    img[1, :, 24:] = 100
    write_image(tmp_path / "a.jpg", img, quality=95)
    back = read_image(tmp_path / "a.jpg")
    assert back.shape == img.shape
    assert (back.int() - img.int()).abs().float().mean() < 3


def test_grayscale_file_loads_as_three_equal_channels(tmp_path):
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    _write_gray_png(tmp_path / "g.png", gray)
    img = read_image(tmp_path / "g.png")
    assert img.shape == (3, 12, 10)
    for c in range(3):
        assert np.array_equal(img[c].numpy(), gray)
    assert is_grayscale(tmp_path / "g.png")


def test_read_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("hello, not a picture")
    with pytest.raises(InputError, match="not an image"):
        read_image(tmp_path / "text.png")


def test_write_errors(tmp_path):
    with pytest.raises(OutputError, match="uint8"):
        write_image(tmp_path / "a.png", torch.zeros(3, 4, 4))
    with pytest.raises(OutputError, match="uint8"):
        write_image(tmp_path / "a.png", torch.zeros(4, 4, dtype=torch.uint8))
    with pytest.raises(OutputError, match="unsupported"):
        write_image(tmp_path / "a.xyz", _random_image())
    with pytest.raises(OutputError, match="does not exist"):
        write_image(tmp_path / "no" / "a.png", _random_image())


def test_list_images_filters_and_sorts(tmp_path):
    for name in ["b.png", "a.PNG", "c.jpg", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.png", "c.jpg"]
    with pytest.raises(InputError):
        list_images(tmp_path / "nope")
