"""HDR10 static metadata (mastering display, content light level) survives an upscale."""

import logging

import av
import numpy as np
import pytest

from vsr.io.ffmpeg_sink import ffmpeg_available
from vsr.io.info import HdrMetadata
from vsr.io.sink import EncodeConfig
from vsr.io.source import PyAVSource
from vsr.upscale import UpscaleConfig, upscale_file

_MASTER = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)"
_EXPECTED = HdrMetadata(green=(13250, 34500), blue=(7500, 3000), red=(34000, 16000),
                        white=(15635, 16450), luminance=(10000000, 1), light_level=(1000, 400))


def _hdr10_clip(path, frames=4):
    """A 64x48 10-bit HEVC clip tagged BT.2020/PQ whose frames carry HDR10 side data."""
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx265", rate=25)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p10le"
        cc = st.codec_context
        cc.color_primaries, cc.color_trc, cc.colorspace = 9, 16, 9
        cc.options = {"x265-params": f"log-level=error:master-display={_MASTER}:"
                                     "max-cll=1000,400:hdr10=1"}
        for i in range(frames):
            img = np.full((48, 64, 3), 20 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p10le")
            frame.pts = i
            out.mux(st.encode(frame))
        out.mux(st.encode(None))
    return path


def _first_frame_hdr(path):
    with av.open(str(path)) as c:
        return HdrMetadata.from_frame(next(c.decode(video=0)))


def test_source_reads_the_first_frames_hdr10_metadata(tmp_path, clip):
    src = _hdr10_clip(tmp_path / "hdr.mkv")
    with PyAVSource(src) as s:
        assert s.info.hdr == _EXPECTED
    assert _EXPECTED.master_display == _MASTER
    assert _EXPECTED.max_cll == "1000,400"
    with PyAVSource(clip("sdr.mkv", frames=2)) as s:
        assert s.info.hdr is None


@pytest.mark.parametrize("codec", ["libx265", "libx264"])
@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_upscale_keeps_hdr10_metadata(tmp_path, codec, encoder):
    if encoder == "ffmpeg" and not ffmpeg_available():
        pytest.skip("ffmpeg program not installed")
    src = _hdr10_clip(tmp_path / "hdr.mkv")
    out = tmp_path / f"out_{codec}_{encoder}.mkv"
    upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                               encode=EncodeConfig(codec=codec), encoder=encoder))
    assert _first_frame_hdr(out) == _EXPECTED
    with av.open(str(out)) as c:
        v = c.streams.video[0].codec_context
        assert (v.pix_fmt, v.color_primaries, v.color_trc) == ("yuv420p10le", 9, 16)


def test_an_encoder_that_cannot_carry_it_warns_once(tmp_path, caplog):
    src = _hdr10_clip(tmp_path / "hdr.mkv")
    out = tmp_path / "out.mkv"
    with caplog.at_level(logging.WARNING):
        upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                   encode=EncodeConfig(codec="libvpx-vp9")))
    lost = [r.getMessage() for r in caplog.records if "HDR10" in r.getMessage()]
    assert len(lost) == 1
    assert "mastering display and content light level" in lost[0]
    assert "libvpx-vp9" in lost[0]
