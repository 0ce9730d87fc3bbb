"""Shared fixtures: synthetic media made with PyAV, the shared data folder, a small network."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import av
import numpy as np
import pytest
import torch

SHARED = Path(__file__).parents[1].parent / "shared" / "data"
BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _private_engine_cache(tmp_path_factory: pytest.TempPathFactory):
    """Backends cache exported engines; tests (and their subprocesses) use a private folder."""
    import os

    old = os.environ.get("VSR_CACHE_DIR")
    os.environ["VSR_CACHE_DIR"] = str(tmp_path_factory.mktemp("vsr-cache"))
    yield
    if old is None:
        os.environ.pop("VSR_CACHE_DIR", None)
    else:
        os.environ["VSR_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def shared_video() -> Path:
    path = SHARED / "video"
    if not path.is_dir():
        pytest.skip("shared data not present")
    return path


def _pattern(i: int, h: int, w: int, depth: int) -> np.ndarray:
    """A moving gradient that survives lossy coding well enough to compare frames."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = (xx * 255 // max(1, w - 1) + 7 * i) % 256
    g = (yy * 255 // max(1, h - 1) + 3 * i) % 256
    b = ((xx + yy) * 2 + 5 * i) % 256
    img = np.stack([r, g, b], axis=-1)
    return (img * 257).astype(np.uint16) if depth > 8 else img.astype(np.uint8)


def make_clip(path: Path, *, frames: int = 12, size: tuple[int, int] = (64, 48),
              time_base: Fraction = Fraction(1, 1000), pts: list[int] | None = None,
              rate: Fraction = Fraction(25), pix_fmt: str = "yuv420p",
              audio_tracks: int = 0, audio_first: bool = False, subtitle: bool = False,
              attachment: bool = False, color: dict | None = None) -> Path:
    """Write a small synthetic clip: libx264 video (optionally 10-bit, VFR via ``pts``),
    AAC audio tracks, a SubRip subtitle track and an attachment (Matroska)."""
    w, h = size
    pts = pts if pts is not None else [round(i / rate / time_base) for i in range(frames)]
    depth = 10 if "10" in pix_fmt else 8
    with av.open(str(path), "w") as out:
        audio = []

        def add_audio(k: int) -> None:
            a = out.add_stream("aac", rate=48000)
            a.layout = "mono"
            a.metadata["language"] = ["eng", "fra", "deu"][k % 3]
            audio.append(a)

        if audio_first:
            for k in range(audio_tracks):
                add_audio(k)
        v = out.add_stream("libx264", rate=rate)
        v.width, v.height, v.pix_fmt = w, h, pix_fmt
        v.time_base = time_base
        v.codec_context.time_base = time_base
        v.codec_context.options = {"preset": "ultrafast"}
        for key, val in (color or {}).items():
            setattr(v.codec_context, key, val)
        if not audio_first:
            for k in range(audio_tracks):
                add_audio(k)
        srt = sub = None
        if subtitle:  # a subtitle stream is copied from a tiny .srt file: no encoder needed
            srt_path = path.with_suffix(".srt")
            srt_path.write_text("1\n00:00:00,100 --> 00:00:00,250\nfirst line\n\n"
                                "2\n00:00:00,300 --> 00:00:00,450\nsecond line\n")
            srt = av.open(str(srt_path))
            sub = out.add_stream_from_template(srt.streams[0])
        if attachment:
            out.add_attachment(name="notes.txt", mimetype="text/plain", data=b"attached bytes")
        fmt = "rgb48le" if depth > 8 else "rgb24"
        for i, p in enumerate(pts):
            f = av.VideoFrame.from_ndarray(_pattern(i, h, w, depth), format=fmt)
            f = f.reformat(format=pix_fmt)
            f.pts, f.time_base = p, time_base
            for pkt in v.encode(f):
                out.mux(pkt)
        for pkt in v.encode(None):
            out.mux(pkt)
        seconds = float((pts[-1] + 40) * time_base)
        for k, a in enumerate(audio):
            n = int(seconds * 48000)
            t = np.arange(n) / 48000
            samples = (0.2 * np.sin(2 * np.pi * (220 + 110 * k) * t)).astype(np.float32)
            for s0 in range(0, n, 1024):
                chunk = samples[s0:s0 + 1024]
                af = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = 48000, s0, Fraction(1, 48000)
                for pkt in a.encode(af):
                    out.mux(pkt)
            for pkt in a.encode(None):
                out.mux(pkt)
        if srt is not None:
            for pkt in srt.demux(srt.streams[0]):
                if pkt.size:
                    pkt.stream = sub
                    out.mux(pkt)
            srt.close()
    return path


def alpha_clip(path: Path, *, frames: int = 8, size: tuple[int, int] = (64, 48)) -> Path:
    """FFV1 yuva420p (an alpha channel) of flat frames of rising level, a keyframe every 2."""
    w, h = size
    with av.open(str(path), "w") as out:
        st = out.add_stream("ffv1", rate=25)
        st.width, st.height, st.pix_fmt = w, h, "yuva420p"
        st.codec_context.gop_size = 2
        for i in range(frames):
            rgba = np.full((h, w, 4), 20 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(rgba, format="rgba").reformat(format="yuva420p")
            frame.pts = i
            out.mux(st.encode(frame))
        out.mux(st.encode(None))
    return path


@pytest.fixture
def clip(tmp_path):
    """Factory: clip(name, **make_clip options) -> path of a new synthetic clip."""
    def factory(name: str = "in.mp4", **kw) -> Path:
        return make_clip(tmp_path / name, **kw)
    return factory


@pytest.fixture
def cli_error(monkeypatch, capsys) -> Callable[..., str]:
    """``cli_error(*args, also=(), code=1)``: run ``vsr ARGS`` in this process, through the
    entry point a shell runs (``main()``), where it must fail with exit code ``code`` (2: a
    command line click refused); returns its one
    `Error:` line, and nothing else is said: no other stderr line (but those starting with a
    prefix in ``also``), no log record a real run would show (WARNING and up; here they go to
    pytest's log capture, not to stderr). For runs that
    fail before any work, which a `vsr` process per case made slow. main()'s process-wide
    tuning (configure_runtime: the allocator, OMP_WAIT_POLICY for every later child process)
    and its start-up signal handlers' state are kept out of the test process."""
    import vsr
    import vsr.cli.main as cli_main

    monkeypatch.setattr(vsr, "configure_runtime", lambda **_: None)

    class Said(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    def run(*args: str, also: tuple[str, ...] = (), code: int = 1) -> str:
        monkeypatch.setattr(cli_main, "_startup_stop", None)  # put back after the test
        monkeypatch.setattr("sys.argv", ["vsr", *args])
        said = Said()
        logging.getLogger().addHandler(said)
        try:
            with pytest.raises(SystemExit) as exc:
                cli_main.main()
        finally:
            logging.getLogger().removeHandler(said)
        err = capsys.readouterr().err
        assert exc.value.code == code and "Traceback" not in err, err
        lines = [line for line in err.splitlines()
                 if line.strip() and not (also and line.startswith(also))]
        assert len(lines) == 1 and lines[0].startswith("Error:"), err
        assert not said.lines, said.lines
        return lines[0]

    return run


@pytest.fixture(scope="session")
def drn_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised drn-t-x2 saved as a checkpoint (no shipped weights needed)."""
    from vsr.models import CheckpointInfo, create_model, save_model

    torch.manual_seed(0)
    model = create_model("drn-t-x2", pretrained=False)
    path = tmp_path_factory.mktemp("ckpt") / "drn-t-x2-random.safetensors"
    save_model(path, model, CheckpointInfo(arch="drn", hparams=dict(model.hparams), scale=2,
                                           name="drn-t-x2-random"))
    return path


@contextlib.contextmanager
def benchmark_script(name: str) -> Iterator[ModuleType]:
    """benchmarks/NAME.py (a script, in no package) imported as the module vsr_bench_NAME
    for the length of the block."""
    spec = importlib.util.spec_from_file_location(f"vsr_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def peers() -> Iterator[ModuleType]:
    """The peer benchmark harness, benchmarks/peers.py, as a module."""
    with benchmark_script("peers") as module:
        yield module


def video_pts_seconds(path: Path) -> list[Fraction]:
    with av.open(str(path)) as c:
        s = next(s for s in c.streams.video
                 if not int(s.disposition) & int(av.stream.Disposition.attached_pic))
        return [f.pts * f.time_base for f in c.decode(s)]


def packets(path: Path, kind: str) -> list[list[bytes]]:
    """Per stream of ``kind`` (in order), the payloads of its packets."""
    with av.open(str(path)) as c:
        streams = [s for s in c.streams if s.type == kind]
        out: dict[int, list[bytes]] = {s.index: [] for s in streams}
        if not streams:
            return []
        for pkt in c.demux(streams):
            if pkt.size:
                out[pkt.stream.index].append(bytes(pkt))
    return list(out.values())
