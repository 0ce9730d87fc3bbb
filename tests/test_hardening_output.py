"""`vsr upscale` on hostile names and a full disk: files are opened as files, every failure is
one clean `Error:` line, and nothing is left behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

VSR = [sys.executable, "-m", "vsr"]


def _vsr(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*VSR, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def _error_line(r: subprocess.CompletedProcess) -> str:
    """The one `Error:` line of a failed run (asserting there is exactly one line)."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert "internal error" not in lines[0], r.stderr
    return lines[0]


@pytest.mark.parametrize("decoder, encoder, name, given, out_name", [
    ("pyav", "pyav", "concat:other.mp4", "concat:other.mp4", "x.mkv"),
    ("pyav", "pyav", "pipe:0.ts", "pipe:0.ts", "concat:x.mkv"),
    ("decord", "ffmpeg", "pipe:0.ts", "./pipe:0.ts", "pipe:1.mkv"),
])
def test_protocol_like_names_are_opened_as_files(clip, tmp_path, decoder, encoder, name,
                                                 given, out_name):
    clip("other.mp4", frames=4)  # what FFmpeg's concat: protocol would read instead
    clip(name, frames=7, size=(32, 32), audio_tracks=1)
    r = _vsr("upscale", given, out_name, "--model", "bicubic", "--scale", "2", "--json",
             "--decoder", decoder, "--encoder", encoder, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["frames_in"] == 7
    import av

    with av.open(str(tmp_path / out_name)) as c:  # absolute: no protocol prefix to misread
        assert c.streams.video[0].codec_context.width == 64
        assert [s.type for s in c.streams] == ["video", "audio"]
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_image_io_opens_protocol_and_pattern_names_as_files(tmp_path, monkeypatch):
    from vsr.imageio import read_image, write_image

    monkeypatch.chdir(tmp_path)
    image = torch.arange(3 * 8 * 8, dtype=torch.uint8).reshape(3, 8, 8)
    for name in ("concat:a.png", "b%d.png", "pipe:1.png"):
        write_image(name, image)
        assert Path(name).is_file(), sorted(os.listdir("."))  # written under its own name
        assert torch.equal(read_image(name), image)
    assert sorted(os.listdir(".")) == ["b%d.png", "concat:a.png", "pipe:1.png"]


@pytest.fixture
def full_disk(tmp_path):
    """A 200 KiB tmpfs holding a filler file that leaves 16 KiB free (needs root)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        free = shutil.disk_usage(mnt).free
        (mnt / "filler").write_bytes(b"\0" * (free - 16 * 1024))
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("out_name, extra", [("o.mp4", ()), ("o.mkv", ()),
                                             ("o.mkv", ("--encoder", "ffmpeg"))])
def test_full_disk_is_one_clean_error(clip, full_disk, out_name, extra):
    src = clip("in.mp4", frames=40, size=(160, 120), audio_tracks=1)
    r = _vsr("upscale", str(src), str(full_disk / out_name), "--model", "bicubic", "--scale",
             "2", "--crf", "30", *extra)
    line = _error_line(r)
    assert "no space left on" in line.lower(), line
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_store_file_on_a_full_disk_keeps_the_old_file_and_leaves_nothing(full_disk):
    """The one atomic byte writer (image outputs, Ray results): ENOSPC is one clean error,
    the file it would have replaced is untouched, no temporary file stays."""
    from vsr.errors import OutputError
    from vsr.io.output import store_file

    (full_disk / "out.png").write_bytes(b"old")
    with pytest.raises(OutputError, match="(?i)no space left"):
        store_file(full_disk / "out.png", b"\1" * (64 * 1024))
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "out.png"]
    assert (full_disk / "out.png").read_bytes() == b"old"
    store_file(full_disk / "small.bin", b"x" * 100)
    assert (full_disk / "small.bin").read_bytes() == b"x" * 100


def test_longest_legal_output_name_works_and_a_longer_one_is_refused(clip, tmp_path):
    src = clip("in.mp4", frames=3)
    longest = tmp_path / ("é" * 125 + "a.mp4")  # 255 bytes: the limit on Linux
    assert len(os.fsencode(longest.name)) == 255
    r = _vsr("upscale", str(src), str(longest), "--model", "bicubic", "--scale", "2")
    assert r.returncode == 0, r.stderr
    assert longest.is_file()
    too_long = tmp_path / ("é" * 125 + "ab.mp4")
    line = _error_line(_vsr("upscale", str(src), str(too_long), "--model", "bicubic",
                            "--scale", "2"))
    assert "too long" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.mp4", longest.name])


@pytest.mark.parametrize("out_name", ["o.m3u8", "o.MPD"])
def test_multi_file_outputs_are_refused(clip, tmp_path, out_name):
    src = clip("in.mp4", frames=3)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    line = _error_line(_vsr("upscale", str(src), str(out_dir / out_name), "--model",
                            "bicubic", "--scale", "2"))
    assert out_name in line
    assert list(out_dir.iterdir()) == []


def test_untrusted_checkpoint_name_cannot_forge_log_lines(clip, tmp_path):
    from vsr.models import CheckpointInfo, create_model, save_model

    model = create_model("drn-t-x2", pretrained=False)
    ckpt = tmp_path / "evil.safetensors"
    name = "evil\nError: forged\x1b[2J\u2028end"
    save_model(ckpt, model, CheckpointInfo(arch="drn", hparams=dict(model.hparams), scale=2,
                                           name=name))
    src = clip("in.mp4", frames=2, size=(32, 32))
    r = _vsr("-v", "upscale", str(src), str(tmp_path / "o.mp4"), "--model", str(ckpt),
             "--device", "cpu", "--backend", "eager")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert not [ln for ln in lines if ln.startswith("Error")], r.stderr
    assert "\x1b" not in r.stderr and "\u2028" not in r.stderr
    assert any("evil\\nError: forged\\x1b[2J\\u2028end" in ln for ln in lines), r.stderr
    with contextlib.suppress(FileNotFoundError):
        (tmp_path / "o.mp4").unlink()


@pytest.mark.parametrize("encoder, out_name, overwrite", [
    ("pyav", "o.mkv", False), ("ffmpeg", "o.mkv", False), ("pyav", "o.png", False),
    ("pyav", "o.mkv", True)])
def test_an_output_written_by_another_run_meanwhile_is_not_replaced(clip, tmp_path, encoder,
                                                                     out_name, overwrite):
    """Two runs to one name: the check at the start passed for both; the later to finish
    must not replace the other's finished file unless asked (--overwrite)."""
    from vsr.errors import OutputError
    from vsr.io.ffmpeg_sink import ffmpeg_available
    from vsr.upscale import UpscaleConfig, upscale_file

    if encoder == "ffmpeg" and not ffmpeg_available():
        pytest.skip("ffmpeg program not installed")
    if out_name.endswith(".png"):
        import numpy as np

        from vsr.io.image import save_image

        src = tmp_path / "in.png"
        save_image(src, np.full((48, 64, 3), 90, np.uint8))
    else:
        src = clip("in.mkv", frames=6, size=(64, 48))
    out = tmp_path / out_name
    theirs = b"the other run's finished output"

    def other_run_finishes(_progress) -> None:  # while this run is still writing
        if not out.exists():
            out.write_bytes(theirs)

    config = UpscaleConfig(input=src, output=out, model="bicubic", scale=2, encoder=encoder,
                           overwrite=overwrite)
    if overwrite:
        upscale_file(config, progress=other_run_finishes)
        assert out.read_bytes() != theirs  # asked for: replaced
    else:
        with pytest.raises(OutputError, match="appeared while this run wrote it"):
            upscale_file(config, progress=other_run_finishes)
        assert out.read_bytes() == theirs
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({src.name, out_name})


def test_an_output_that_is_a_link_to_the_input_is_refused(clip, tmp_path, cli_error):
    """A symbolic or hard link to the input, as OUT, is the input: refused, --overwrite too
    (vsr.io.output.same_file, the rule export and stream share)."""
    src = clip("in.mkv", frames=2, size=(64, 48))
    for name, make in (("hard.mkv", os.link), ("soft.mkv", os.symlink)):
        out = tmp_path / name
        make(src, out)
        line = cli_error("upscale", str(src), str(out), "--model", "bicubic", "--scale", "2",
                         "--overwrite")
        assert "output would replace the input" in line
        assert out.stat().st_ino == src.stat().st_ino  # the link is left as it was


def test_a_pipe_as_the_output_is_refused_and_a_link_is_followed(clip, tmp_path, cli_error):
    """`--overwrite` renamed the finished file over a named pipe (or a link to one, as
    /dev/stdout is): its reader got nothing and the pipe was gone; as root /dev/null would
    have become a file. A link to a file was replaced by a file of its own; the ffmpeg
    program writes the file it names, and so does vsr now."""
    src = clip("in.mkv", frames=2, size=(64, 48))
    fifo = tmp_path / "pipe.mkv"
    os.mkfifo(fifo)
    (tmp_path / "to_pipe.mkv").symlink_to(fifo)
    for out in ("pipe.mkv", "to_pipe.mkv"):
        for more in ((), ("--overwrite",)):
            line = cli_error("upscale", str(src), str(tmp_path / out), "--model", "bicubic",
                             "--scale", "2", *more)
            assert line.endswith("is a named pipe, not a file: name a file ('vsr stream' "
                                 "writes to pipes)")
    assert fifo.is_fifo() and (tmp_path / "to_pipe.mkv").is_symlink()
    from vsr.upscale import UpscaleConfig, upscale_file

    target = tmp_path / "real.mkv"
    target.write_bytes(b"old")
    link = tmp_path / "link.mkv"
    link.symlink_to(target.name)
    upscale_file(UpscaleConfig(input=src, output=link, model="bicubic", scale=2,
                               overwrite=True))
    assert link.is_symlink() and link.resolve() == target
    assert target.read_bytes()[:4] == b"\x1aE\xdf\xa3"  # Matroska, upscaled
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["in.mkv", "pipe.mkv", "to_pipe.mkv", "real.mkv", "link.mkv"])


def test_an_output_folder_that_is_a_file_is_named_as_one(clip, tmp_path, cli_error):
    """`vsr upscale IN afile/out.mp4` said 'output folder does not exist: afile'."""
    src = clip("in.mp4", frames=2)
    (tmp_path / "afile").write_text("x")
    line = cli_error("upscale", str(src), str(tmp_path / "afile" / "out.mp4"), "--model",
                     "bicubic", "--scale", "2")
    assert line == f"Error: output folder {tmp_path / 'afile'} is a file, not a folder"
