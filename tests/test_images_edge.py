"""Hostile and unusual pictures through `vsr upscale` and the image writer: headers cut
inside their first bytes, colour kept exactly through JPEG, metadata that does not fit the
output."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from vsr.upscale import UpscaleConfig, upscale_file


@pytest.mark.parametrize("name, head", [
    ("cut.tif", b"II*\x00"),  # a TIFF header without its first directory's offset
    ("cut-be.tif", b"MM\x00*\x00\x00"),
    ("cut.webp", b"RIFF\x10\x00\x00\x00WEBPVP8X"),  # an extended WebP cut before its flags
    ("cut2.webp", b"RIFF\x10\x00\x00\x00WEBPVP8X\x0a\x00"),
], ids=["tiff", "tiff-big-endian", "webp", "webp-flags"])
def test_a_picture_cut_inside_its_header_is_one_input_error(tmp_path, cli_error, name, head):
    """Such files were "Error: internal error: error: unpack requires a buffer of 4 bytes"
    (TIFF) and "... IndexError: mmap index out of range" (WebP)."""
    src = tmp_path / name
    src.write_bytes(head)
    line = cli_error("upscale", "-m", "bicubic", "-s", "2", str(src), str(tmp_path / "up.png"))
    assert "internal error" not in line and name in line, line
    assert not (tmp_path / "up.png").exists()


def _photo_like(h: int = 96, w: int = 128) -> np.ndarray:
    """Smooth colour areas and edges, every channel across most of its range."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([127 + 120 * np.sin(x / 9 + y / 23), 127 + 110 * np.cos(y / 7),
                    127 + 100 * np.sin((x - y) / 13)], -1)
    rgb[h // 3:h // 2, w // 4:w // 2] = (250, 40, 10)
    return rgb.round().astype(np.uint8)


@pytest.mark.parametrize("deep", [False, True], ids=["8-bit", "16-bit"])
def test_a_jpeg_output_keeps_the_colours_without_a_cast(tmp_path, deep):
    """swscale's RGB -> YCbCr truncated the chroma: every JPEG written came out with Cb and Cr
    half a level low on average, a cast of R -0.7, G +0.5, B -1.0 as Pillow (libjpeg) shows it;
    both writers and upscale's JPEG outputs."""
    from PIL import Image

    from vsr.io.image import save_image

    rgb = _photo_like()
    path = tmp_path / "out.jpg"
    save_image(path, rgb.astype(np.uint16) * 257 if deep else rgb)
    with Image.open(path) as im:
        shown = np.asarray(im.convert("RGB"), np.float64)
    bias = (shown - rgb).reshape(-1, 3).mean(axis=0)
    assert np.abs(bias).max() < 0.15, bias
    assert np.abs(shown - rgb).mean() < 2  # the quantiser's noise


@pytest.mark.parametrize("subsampling", [2, 1], ids=["4:2:0", "4:2:2"])
def test_read_image_shows_a_subsampled_jpeg_as_libjpeg_does(tmp_path, subsampling):
    """swscale's default conversion of 4:2:0 and 4:2:2 JPEG to RGB came out darker than the
    picture (R -0.5, G -0.9, B -0.5 on average against Pillow's libjpeg), for eval's and
    training's pictures alike."""
    from PIL import Image

    from vsr.imageio import read_image

    path = tmp_path / "in.jpg"
    Image.fromarray(_photo_like()).save(path, quality=95, subsampling=subsampling)
    with Image.open(path) as im:
        shown = np.asarray(im.convert("RGB"), np.float64)
    got = read_image(path).permute(1, 2, 0).numpy().astype(np.float64)
    bias = (got - shown).reshape(-1, 3).mean(axis=0)
    assert np.abs(bias).max() < 0.15, bias
    assert np.abs(got - shown).max() <= 4


@pytest.mark.parametrize("source", [".jpg", ".png", ".webp"])
def test_a_photos_exif_is_carried_for_the_upright_picture(tmp_path, source):
    """A photo's EXIF data (camera, date taken, place) was dropped from every output; it is
    carried into .jpg, .png and .webp, its orientation set to 1 (the picture is written
    upright, so a viewer must not turn it again) and its sideways thumbnail left out."""
    from PIL import ExifTags, Image, ImageOps

    rgb = _photo_like(24, 32)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "PhoneMaker", "Model 7", 6
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"  # DateTimeOriginal
    src = tmp_path / f"in{source}"
    Image.fromarray(rgb).save(src, exif=_with_thumbnail(exif.tobytes()), **(
        {"lossless": True} if source == ".webp" else {}))
    with Image.open(src) as im:
        assert im.getexif().get_ifd(ExifTags.IFD.IFD1)  # the thumbnail is there to leave out
    for suffix in (".jpg", ".png", ".webp"):
        out = tmp_path / f"up{suffix}"
        upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2))
        with Image.open(out) as im:
            got = im.getexif()
            assert (got.get(0x010F), got.get(0x0110), got.get(0x0112)) == (
                "PhoneMaker", "Model 7", 1), (source, suffix, dict(got))
            assert got.get_ifd(0x8769).get(0x9003) == "2024:05:06 07:08:09"
            assert im.size == (48, 64)  # upright: 24x32 stored on its side
            assert ImageOps.exif_transpose(im).size == (48, 64)
            assert not got.get_ifd(ExifTags.IFD.IFD1), (source, suffix)  # no sideways thumbnail


def _with_thumbnail(exif: bytes) -> bytes:
    """``exif`` (Pillow's ``Exif.tobytes()``: "Exif\\0\\0" and TIFF-structured data) with a
    second directory holding a small JPEG thumbnail, as a camera writes it."""
    from PIL import Image

    thumb = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 0, 0)).save(thumb, "JPEG")
    jpeg = thumb.getvalue()
    head, tiff = exif[:6], bytearray(exif[6:])
    order = "<" if tiff[:2] == b"II" else ">"
    (first,) = struct.unpack(order + "I", tiff[4:8])
    (count,) = struct.unpack(order + "H", tiff[first:first + 2])
    link = first + 2 + 12 * count  # where the first directory names the next
    tiff += bytes(len(tiff) % 2)  # directories start on a word boundary
    ifd1 = len(tiff)
    tiff += struct.pack(order + "H", 2)
    tiff += struct.pack(order + "HHII", 0x0201, 4, 1, ifd1 + 2 + 2 * 12 + 4)  # JPEG offset
    tiff += struct.pack(order + "HHII", 0x0202, 4, 1, len(jpeg))  # JPEG length
    tiff += bytes(4) + jpeg  # no third directory
    tiff[link:link + 4] = struct.pack(order + "I", ifd1)
    return head + bytes(tiff)


def test_a_one_picture_gif_is_a_picture_and_an_animated_one_a_video(tmp_path, cli_error):
    """A GIF of one picture upscaled to .png was refused: "an animated picture needs a video
    output". It is a picture (its transparency kept); it still makes a one-frame .gif, and an
    animated GIF still needs a video output."""
    from PIL import Image

    still = Image.new("P", (16, 12), 1)
    still.putpalette([0, 0, 0, 200, 30, 60] + [0] * 762)
    still.putpixel((0, 0), 0)
    src = tmp_path / "still.gif"
    still.save(src, transparency=0)
    upscale_file(UpscaleConfig(input=src, output=tmp_path / "up.png", model="bicubic", scale=2))
    with Image.open(tmp_path / "up.png") as im:
        got = np.asarray(im)
    assert got.shape == (24, 32, 4) and got[0, 0, 3] == 0 and tuple(got[-1, -1]) == (
        200, 30, 60, 255)
    upscale_file(UpscaleConfig(input=src, output=tmp_path / "up.gif", model="bicubic", scale=2))
    with Image.open(tmp_path / "up.gif") as im:
        assert im.size == (32, 24) and getattr(im, "n_frames", 1) == 1

    frames = [Image.new("RGB", (16, 12), (60 * i, 0, 0)) for i in range(3)]
    anim = tmp_path / "anim.gif"
    frames[0].save(anim, save_all=True, append_images=frames[1:], duration=100)
    line = cli_error("upscale", "-m", "bicubic", "-s", "2", str(anim), str(tmp_path / "a.png"))
    assert "an animated picture needs a video output" in line, line
    assert not (tmp_path / "a.png").exists()


def test_an_opaque_lossless_webp_has_no_alpha_and_a_see_through_one_keeps_it(tmp_path, caplog):
    """FFmpeg decodes every lossless WebP as argb: an opaque one was said to have "an alpha
    channel (argb) that a .jpg picture cannot hold", and written to .png as RGBA. Its alpha is
    judged by its pixels."""
    import logging

    from PIL import Image

    opaque = tmp_path / "opaque.webp"
    Image.new("RGB", (16, 12), (10, 120, 230)).save(opaque, "WEBP", lossless=True)
    clear = tmp_path / "clear.webp"
    rgba = np.full((12, 16, 4), (10, 120, 230, 255), np.uint8)
    rgba[:4, :4, 3] = 0
    Image.fromarray(rgba).save(clear, "WEBP", lossless=True)
    with caplog.at_level(logging.WARNING):
        upscale_file(UpscaleConfig(input=opaque, output=tmp_path / "o.jpg", model="bicubic",
                                   scale=2))
        upscale_file(UpscaleConfig(input=opaque, output=tmp_path / "o.png", model="bicubic",
                                   scale=2))
    assert not [r for r in caplog.records if "alpha" in r.getMessage()], caplog.text
    with Image.open(tmp_path / "o.png") as im:
        assert im.mode == "RGB"
    upscale_file(UpscaleConfig(input=clear, output=tmp_path / "c.png", model="bicubic", scale=2))
    with Image.open(tmp_path / "c.png") as im:
        got = np.asarray(im)
    assert got.shape == (24, 32, 4) and got[0, 0, 3] == 0 and got[-1, -1, 3] == 255
