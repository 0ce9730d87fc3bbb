"""ICC colour profiles: a picture's embedded profile is carried into its upscaled output."""

import io
import logging
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageCms

from vsr.io.icc import embed_profile, read_profile
from vsr.io.image import IMAGE_FORMATS, encode_image
from vsr.upscale import UpscaleConfig, upscale_file

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
CARRIED = (".png", ".jpg", ".webp", ".tif")


def _profile(size: int) -> bytes:
    """A profile-shaped blob: its header's first field is its size, as read_profile checks."""
    body = np.random.default_rng(size).integers(0, 256, size - 4, np.uint8).tobytes()
    return struct.pack(">I", size) + body


@pytest.mark.parametrize("suffix", CARRIED)
@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("size", [588, 200_000])  # JPEG: one APP2 segment, then four
def test_a_profile_embedded_in_an_encoded_picture_reads_back_for_pillow_too(tmp_path, suffix,
                                                                          channels, size):
    image = np.random.default_rng(0).integers(0, 256, (12, 16, channels), np.uint8)
    if suffix == ".jpg":
        image = image[..., :3]
    profile = SRGB if size == 588 else _profile(size)
    plain, _ = encode_image(image, IMAGE_FORMATS[suffix])
    assert read_profile(plain) is None
    data = embed_profile(plain, profile)
    assert read_profile(data) == profile
    assert read_profile(embed_profile(data, SRGB)) == SRGB  # replaced, not added
    path = tmp_path / f"embedded{suffix}"
    path.write_bytes(data)
    with Image.open(path) as im:
        im.load()
        assert im.info.get("icc_profile") == profile
        assert im.size == (16, 12)
        decoded = np.asarray(im)
    with Image.open(io.BytesIO(plain)) as im:
        assert np.array_equal(np.asarray(im), decoded)  # the picture itself untouched


def test_a_damaged_or_cut_profile_is_none_not_an_error():
    data = embed_profile(encode_image(np.zeros((8, 8, 3), np.uint8), IMAGE_FORMATS[".png"])[0],
                         SRGB)
    at = data.index(b"iCCP")
    assert read_profile(data[:at + 40]) is None  # cut inside the compressed profile
    flip = at + 40  # inside the compressed profile
    assert read_profile(data[:flip] + bytes([data[flip] ^ 0xFF]) + data[flip + 1:]) is None
    jpeg = embed_profile(encode_image(np.zeros((8, 8, 3), np.uint8), IMAGE_FORMATS[".jpg"])[0],
                         _profile(200_000))
    first = jpeg.index(b"ICC_PROFILE")
    second = jpeg.index(b"ICC_PROFILE", first + 1)
    assert read_profile(jpeg[:first - 4] + jpeg[second - 4:]) is None  # a part missing
    for junk in (b"", b"\xff\xd8", b"RIFF\x00\x00\x00\x00WEBP", b"II*\x00\xff\xff\xff\xff"):
        assert read_profile(junk) is None


@pytest.mark.parametrize("source", [".png", ".jpg", ".webp", ".tif"])
def test_upscale_carries_the_inputs_profile(tmp_path, source):
    src = tmp_path / f"in{source}"
    Image.new("RGBA" if source == ".png" else "RGB", (16, 12), (200, 30, 30, 255)).save(
        src, icc_profile=SRGB)
    for suffix in CARRIED:
        out = tmp_path / f"up{suffix}"
        upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2))
        with Image.open(out) as im:
            assert im.info.get("icc_profile") == SRGB, suffix
            assert im.size == (32, 24)


def test_a_profile_a_format_cannot_hold_is_warned_of(tmp_path, caplog):
    src = tmp_path / "in.jpg"
    Image.new("RGB", (16, 12), (200, 30, 30)).save(src, icc_profile=SRGB)
    with caplog.at_level(logging.WARNING):
        upscale_file(UpscaleConfig(input=src, output=tmp_path / "up.bmp", model="bicubic",
                                   scale=2))
    assert "ICC colour profile is not carried into a .bmp picture" in caplog.text


def test_a_png_with_a_profile_does_not_crash_the_process(tmp_path):
    """PyAV 18 frees a PNG frame's profile metadata twice: `vsr upscale` wrote the picture,
    then died with SIGSEGV (exit 139) when the first frame was let go."""
    src = tmp_path / "in.png"
    Image.new("RGB", (16, 12), (200, 30, 30)).save(src, icc_profile=SRGB)
    run = subprocess.run([sys.executable, "-m", "vsr", "upscale", str(src),
                          str(tmp_path / "up.png"), "--model", "bicubic", "--scale", "2"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (run.returncode, run.stderr[-500:])


def _profile_of(space: bytes) -> bytes:
    """A profile-shaped blob whose header says its data colour space (bytes 16-20)."""
    blob = bytearray(_profile(588))
    blob[12:20] = b"prtr" + space
    return bytes(blob)


@pytest.mark.parametrize("mode, space", [("CMYK", b"CMYK"), ("L", b"GRAY")])
def test_a_profile_for_other_than_rgb_values_is_not_carried_into_rgb(tmp_path, caplog, mode,
                                                                   space):
    """A CMYK JPEG's press profile (a grey one's "Gray Gamma 2.2") was put into the RGB
    picture written: a profile that does not describe the values beside it, which the PNG
    and ICC specifications forbid and readers ignore or misapply."""
    src = tmp_path / "in.jpg"
    Image.new("RGB", (16, 12), (200, 30, 30)).convert(mode).save(
        src, icc_profile=_profile_of(space), quality=95)
    assert read_profile(src.read_bytes()) is not None
    for suffix in CARRIED:
        caplog.clear()
        out = tmp_path / f"up{suffix}"
        with caplog.at_level(logging.WARNING):
            upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2))
        assert read_profile(out.read_bytes()) is None, suffix
        assert [r.getMessage() for r in caplog.records] == [
            f"in.jpg: its ICC colour profile describes {space.decode()} values, not the RGB "
            f"written into the {suffix} picture: it is not carried"], suffix
