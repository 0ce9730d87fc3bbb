"""--no-audio (``audio=False``) for `vsr upscale` and `vsr batch`: every audio stream left out,
the other streams carried, for both encoders and the batch join. A WebM or a GIF of a file
with AAC audio could not be made at all (newcomer review item 23)."""

import json
import shutil

import av
import pytest
from click.testing import CliRunner
from conftest import make_clip

from vsr.errors import OutputError
from vsr.jobs import BatchConfig, JobOptions, run_batch
from vsr.upscale import UpscaleConfig, upscale_file

BICUBIC = ("--model", "bicubic", "--scale", "2")


def _streams(path) -> tuple[list[str], int]:
    """The output's stream kinds, in order, and the frames its video holds (decoded)."""
    with av.open(str(path)) as c:
        kinds = [s.type for s in c.streams]
        frames = sum(1 for _ in c.decode(video=0))
    return kinds, frames


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_a_webm_of_a_file_with_aac_audio_is_video_only_with_no_audio(tmp_path, encoder):
    if encoder == "ffmpeg" and shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg program")
    from vsr.cli.upscale import upscale

    src = make_clip(tmp_path / "in.mp4", frames=6, audio_tracks=1)
    out = tmp_path / "out.webm"
    r = CliRunner().invoke(upscale, [str(src), str(out), "--codec", "libvpx-vp9", *BICUBIC,
                                     "--encoder", encoder, "--no-audio", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["copied_packets"] == {}
    assert _streams(out) == (["video"], 6)


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_no_audio_carries_the_other_streams(tmp_path, encoder):
    if encoder == "ffmpeg" and shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg program")
    src = make_clip(tmp_path / "in.mkv", frames=6, audio_tracks=2, subtitle=True)
    out = tmp_path / "out.mkv"
    upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                               encoder=encoder, audio=False))
    assert _streams(out) == (["video", "subtitle"], 6)


def test_a_gif_of_a_file_with_audio(tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=4, audio_tracks=1)
    out = tmp_path / "out.gif"
    with pytest.raises(OutputError, match="--no-audio"):
        upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2))
    upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2, audio=False))
    assert _streams(out) == (["video"], 4)


def test_the_error_for_audio_a_container_cannot_carry_names_no_audio(tmp_path, cli_error):
    src = make_clip(tmp_path / "in.mp4", frames=2, audio_tracks=1)
    line = cli_error("upscale", str(src), str(tmp_path / "o.webm"), "--codec", "libvpx-vp9",
                     *BICUBIC)
    assert line == ("Error: the output format webm cannot carry stream 1 (audio, aac): 'webm' "
                    "format does not support 'aac' codec; choose a container that can (e.g. "
                    ".mkv), or leave the audio out (--no-audio)"), line
    assert not (tmp_path / "o.webm").exists()


def test_a_webm_with_the_default_codec_names_a_codec_webm_holds(tmp_path, cli_error):
    src = make_clip(tmp_path / "in.mp4", frames=2)
    line = cli_error("upscale", str(src), str(tmp_path / "o.webm"), *BICUBIC)
    assert line == ("Error: the output format of o.webm (webm) cannot hold libx264 video; use "
                    "another --codec (webm holds libvpx-vp9 or libsvtav1), or a container "
                    "that can (e.g. .mkv)"), line


def test_a_batch_with_no_audio_joins_video_only(tmp_path):
    """The batch's segments carry no audio; its join copied every audio stream, with nothing
    to leave it out (a video is joined from its segments, one here); a manifest line sets it
    too."""
    src = make_clip(tmp_path / "a.mp4", frames=12, audio_tracks=1)
    out = tmp_path / "out"
    options = JobOptions(model="bicubic", scale=2, codec="libvpx-vp9")
    from vsr.cli.batch import batch

    r = CliRunner().invoke(batch, [str(src), "-o", str(out), "--name", "{stem}.webm",
                                   "--codec", "libvpx-vp9", *BICUBIC, "--no-audio",
                                   "--devices", "cpu"])
    assert r.exit_code == 0, r.output
    assert "1 done, 0 skipped, 0 failed; 1 segment computed" in r.stderr, r.stderr
    assert _streams(out / "a.webm") == (["video"], 12)
    # a manifest line's "audio": false, beside one that keeps it
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"input": "a.mp4", "output": "m.webm", "audio": False})
                        + "\n" + json.dumps({"input": "a.mp4", "output": "m.mkv"}) + "\n")
    result = run_batch(BatchConfig(inputs=(), manifests=(manifest,), output_dir=out,
                                   options=options, devices=("cpu",)))
    assert not result.failed, result.failed
    assert _streams(out / "m.webm") == (["video"], 12)
    assert _streams(out / "m.mkv") == (["video", "audio"], 12)


def test_the_default_keeps_the_fingerprint_of_batches_recorded_before():
    """A finished file of an older batch is skipped on a rerun: audio=True (the default)
    leaves the fingerprint as it was before the field; audio=False makes another (the output
    differs)."""
    import dataclasses
    import hashlib

    from vsr.errors import ConfigError

    base = JobOptions(model="bicubic", scale=2)
    before = {k: v for k, v in dataclasses.asdict(base).items() if k != "audio"}
    assert base.fingerprint() == hashlib.sha1(
        json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert base.fingerprint() != JobOptions(model="bicubic", scale=2, audio=False).fingerprint()
    with pytest.raises(ConfigError, match="audio must be True or False"):
        JobOptions(audio="no")
