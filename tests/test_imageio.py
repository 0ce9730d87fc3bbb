"""vsr.imageio: PyAV-only still image reading and writing; the one image writer
(vsr.io.image.save_image) behind both write_image and the image sink."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from vsr.errors import InputError, OutputError
from vsr.imageio import is_grayscale, list_images, read_image, write_image
from vsr.io.image import IMAGE_FORMATS, ImageSink, jpeg_qscale, save_image


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


# --- one writer: write_image (torch, (3, H, W)) and ImageSink (numpy, (H, W, 3)) -----------

def _by_write_image(path, array: np.ndarray, **kw) -> None:
    write_image(path, torch.from_numpy(array).permute(2, 0, 1), **kw)


def _by_sink(path, array: np.ndarray, *, quality: int = 95, **kw) -> None:
    with ImageSink(path, array.shape[1], array.shape[0], jpeg_scale=jpeg_qscale(quality),
                   **kw) as sink:
        sink.write(array)


WRITERS = {"write_image": _by_write_image, "ImageSink": _by_sink}


def _picture(gray: bool = False) -> np.ndarray:
    img = _random_image(18, 26).permute(1, 2, 0).numpy()
    return np.repeat(img[..., :1], 3, axis=2) if gray else np.ascontiguousarray(img)


@pytest.mark.parametrize("suffix", sorted(IMAGE_FORMATS))
def test_every_format_round_trips_through_both_writers_alike(tmp_path, suffix):
    gray = suffix == ".pgm"  # a gray format keeps gray pictures
    img = _picture(gray)
    for name, write in WRITERS.items():
        write(tmp_path / f"{name}{suffix}", img, quality=90)
        back = read_image(tmp_path / f"{name}{suffix}").permute(1, 2, 0).numpy()
        assert back.shape == img.shape
        if IMAGE_FORMATS[suffix].codec == "mjpeg":
            assert np.abs(back.astype(int) - img).mean() < 12, name  # noise: JPEG's worst case
        else:
            assert np.array_equal(back, img), name
        assert is_grayscale(tmp_path / f"{name}{suffix}") == gray
    # one encoder, one set of settings: the same picture gives the same file
    assert (tmp_path / f"write_image{suffix}").read_bytes() == \
        (tmp_path / f"ImageSink{suffix}").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"ImageSink{suffix}",
                                                          f"write_image{suffix}"]


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_jpeg_quality_is_applied(tmp_path, name):
    sizes = []
    for quality in (95, 30):
        WRITERS[name](tmp_path / f"q{quality}.jpg", _picture(), quality=quality)
        sizes.append((tmp_path / f"q{quality}.jpg").stat().st_size)
    assert sizes[1] < 0.8 * sizes[0]


def _errors(make_path, array, **kw) -> dict[str, str]:
    """The OutputError message of each writer (None: it wrote)."""
    got = {}
    for name, write in WRITERS.items():
        try:
            write(make_path(name), array, **kw)
            got[name] = None
        except OutputError as exc:
            got[name] = str(exc)
    return got


def test_writers_refuse_to_overwrite_unless_asked(tmp_path):
    for name in WRITERS:
        (tmp_path / f"{name}.png").write_bytes(b"old")
    got = _errors(lambda n: tmp_path / f"{n}.png", _picture())
    assert all(m is not None and m.startswith("output exists") for m in got.values()), got
    for name in WRITERS:
        assert (tmp_path / f"{name}.png").read_bytes() == b"old"
    assert _errors(lambda n: tmp_path / f"{n}.png", _picture(), overwrite=True) == {
        "write_image": None, "ImageSink": None}
    for name in WRITERS:
        assert np.array_equal(read_image(tmp_path / f"{name}.png").permute(1, 2, 0), _picture())


@pytest.mark.parametrize("case", ["suffix", "folder", "encoder"])
def test_writers_fail_alike_and_leave_nothing(tmp_path, case):
    (tmp_path / "keep.webp").write_bytes(b"old")
    if case == "suffix":
        where, array, expect = tmp_path / "a.xyz", _picture(), "unsupported image format '.xyz'"
    elif case == "folder":
        where, array, expect = tmp_path / "no" / "a.png", _picture(), "output folder does not"
    else:  # WebP is at most 16383 pixels wide: the encoder itself refuses
        where, array, expect = tmp_path / "keep.webp", np.zeros((1, 16384, 3), np.uint8), \
            "encoding keep.webp failed"
    got = _errors(lambda n: where, array, overwrite=True)
    assert got["write_image"] == got["ImageSink"], got
    assert got["write_image"].startswith(expect) and "\n" not in got["write_image"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.webp"]  # no partial file
    assert (tmp_path / "keep.webp").read_bytes() == b"old"


def test_list_images_filters_and_sorts(tmp_path):
    for name in ["b.png", "a.PNG", "c.jpg", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.png", "c.jpg"]
    with pytest.raises(InputError):
        list_images(tmp_path / "nope")


def test_image_sink_that_cannot_finish_leaves_no_partial(tmp_path):
    """The sink checks the path when it opens and writes at close: a folder that took the
    name in between fails the close with one line, and the temporary file goes too."""
    sink = ImageSink(tmp_path / "a.png", 26, 18)
    sink.write(_picture())
    (tmp_path / "a.png").mkdir()
    with pytest.raises(OutputError, match="a.png appeared while this run wrote it"):
        sink.close()
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"] and (tmp_path / "a.png").is_dir()


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
def test_a_photo_stored_on_its_side_is_upscaled_upright(tmp_path, suffix):
    """Phones store photos on their side with an EXIF orientation; the output (an image holds
    no display rotation) was written as stored and showed turned. Every orientation is now
    applied as viewers apply it (Pillow's exif_transpose), alpha plane too."""
    from PIL import Image, ImageOps

    from vsr.upscale import UpscaleConfig, upscale_file

    mode = "RGBA" if suffix in (".png", ".webp") else "RGB"
    y, x = np.mgrid[0:12, 0:20]  # smooth (a JPEG keeps it), and no two orientations alike
    planes = [x * 12, y * 20, (x + 2 * y) * 5, 255 - y * 8][:len(mode)]
    stored = Image.fromarray(np.stack(planes, -1).astype(np.uint8), mode)
    options = {".jpg": {"quality": 100, "subsampling": 0}, ".webp": {"lossless": True}}
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        src = tmp_path / f"o{orientation}{suffix}"
        stored.save(src, exif=exif.tobytes(), **options.get(suffix, {}))
        shown = ImageOps.exif_transpose(Image.open(src)).convert(mode)
        shown.save(tmp_path / "shown.png")  # the picture as viewers show it, no EXIF
        want, out = tmp_path / "want.png", tmp_path / f"up{orientation}.png"
        for a, b in ((tmp_path / "shown.png", want), (src, out)):
            upscale_file(UpscaleConfig(input=a, output=b, model="bicubic", scale=2,
                                       overwrite=True))
        with Image.open(out) as got, Image.open(want) as expected:
            assert got.size == expected.size, orientation
            assert got.getexif().get(0x0112) in (None, 1)
            diff = np.abs(np.asarray(got).astype(int) - np.asarray(expected)).max()
        assert diff <= (0 if suffix != ".jpg" else 2), (orientation, diff)


def test_an_animated_png_is_a_video_and_a_multipage_tiff_says_what_is_left(tmp_path, caplog):
    """An APNG was taken for one picture by its name (.png): no output could hold its frames
    ('an image output takes one frame', and a .mkv was refused as not an image). It is a
    video now, every frame kept with its time. A TIFF's pages after the first, which FFmpeg
    does not read, were dropped without a word; a warning says so now."""
    import logging

    from PIL import Image

    from vsr.upscale import UpscaleConfig, upscale_file

    pages = [Image.new("RGB", (16, 12), (40 * k, 255 - 40 * k, 90)) for k in range(4)]
    apng, tiff = tmp_path / "anim.png", tmp_path / "pages.tif"
    pages[0].save(apng, save_all=True, append_images=pages[1:], duration=100)
    pages[0].save(tiff, save_all=True, append_images=pages[1:])

    def run(src, out):
        return upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2))

    assert run(apng, tmp_path / "anim.mkv").frames_out == 4
    with av.open(str(tmp_path / "anim.mkv")) as c:
        assert [round(float(f.time), 3) for f in c.decode(video=0)] == [0, 0.1, 0.2, 0.3]
    with pytest.raises(OutputError, match="an animated picture needs a video output"):
        run(apng, tmp_path / "anim-x2.png")
    caplog.set_level(logging.WARNING, logger="vsr")
    assert run(tiff, tmp_path / "pages-x2.tif").frames_out == 1
    assert [r.getMessage() for r in caplog.records] == [
        "pages.tif holds 4 pages, and FFmpeg reads the first only: the other 3 are not upscaled"]


@pytest.mark.parametrize("suffix, said", [(".jpg", True), (".bmp", True), (".png", False)])
def test_a_deep_picture_written_at_8_bits_says_so(tmp_path, caplog, suffix, said):
    """A 16-bit PNG upscaled to .jpg lost its depth without a word (a lost alpha plane was
    warned of)."""
    import logging

    from vsr.io.image import save_image
    from vsr.upscale import UpscaleConfig, upscale_file

    src = tmp_path / "deep.png"
    y, x = np.mgrid[0:12, 0:16]
    save_image(src, np.stack([x * 4000, y * 5000, x * y * 300], -1).astype(np.uint16))
    caplog.set_level(logging.WARNING, logger="vsr")
    upscale_file(UpscaleConfig(input=src, output=tmp_path / f"up{suffix}", model="bicubic",
                               scale=2))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ([f"deep.png: its 16-bit picture is written at 8 bits (a {suffix} picture "
                      "holds no more; .png or .tif keep 16)"] if said else []), lines


@pytest.mark.parametrize(("suffix", "pix_fmt"), [(".png", "monob"), (".pbm", "monow")])
def test_a_one_bit_picture_is_grayscale(tmp_path, suffix, pix_fmt):
    """A 1-bit picture (FFmpeg's monob, as a 1-bit PNG decodes; monow, as a PBM) is a
    single-channel one: it was not counted as gray, so `vsr eval --raw-gray` scored a 1-bit
    PNG on Y as if it were colour."""
    import shutil
    import subprocess

    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg program")
    bits = (np.indices((8, 12)).sum(axis=0) % 2 * 255).astype(np.uint8)  # a checkerboard
    _write_gray_png(tmp_path / "g.png", bits)
    path = tmp_path / f"m{suffix}"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(tmp_path / "g.png"), "-pix_fmt", pix_fmt,
                    str(path)], check=True)
    with av.open(str(path)) as c:  # the file really decodes as 1-bit
        assert c.streams.video[0].codec_context.pix_fmt == pix_fmt
    assert is_grayscale(path)
    img = read_image(path)
    assert all(np.array_equal(img[c].numpy(), bits) for c in range(3))


@pytest.mark.parametrize("suffix", [".pgm", ".png", ".tif", ".ppm"])
def test_a_deep_grey_picture_is_written_code_for_code(tmp_path, suffix):
    """A 16-bit grey picture went through swscale's RGB -> 16-bit grey, which is off by up to
    248 codes (32768 written as 32895): a grey .pgm came back brighter. Every deep format
    keeps every code of a grey picture (and of a colour one where it holds colour)."""
    codes = np.array([0, 1, 257, 4660, 32768, 40000, 65280, 65534, 65535], np.uint16)
    grey = np.repeat(np.tile(codes, (4, 2))[..., None], 3, axis=2)
    path = tmp_path / f"deep{suffix}"
    save_image(path, grey)
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
    fmt = frame.format.name
    back = frame.to_ndarray()
    back = back if back.ndim == 2 else back[..., 0]
    assert fmt.startswith(("gray16", "rgb48")), fmt
    assert np.array_equal(back.astype(np.uint16), grey[..., 0]), (fmt, back[0], codes)
