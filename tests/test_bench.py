import os

from vsr.bench import BenchConfig, run_bench
from vsr.io.sink import EncodeConfig


def test_bench_reports_every_stage(clip):
    src = clip("b.mp4", frames=8, size=(96, 64))
    r = run_bench(BenchConfig(input=src, model="bicubic", scale=2, device="cpu", frames=6,
                              encode=EncodeConfig(preset="ultrafast")))
    d = r.to_json()
    for key in ("decode_fps", "model_fps", "encode_fps", "pipeline_fps", "serial_fps"):
        assert d[key] > 0
    assert r.frames == 6 and r.size_out == (192, 128)
    # process CPU time per frame of each loop: positive, and at most every core busy all along
    cores = os.cpu_count() or 1
    assert 0 < d["pipeline_cpu_ms"] <= 1.1 * cores * 1000 / r.pipeline_fps
    assert 0 < d["serial_cpu_ms"] <= 1.1 * cores * 1000 / r.serial_fps


def test_bench_repeats_alternate_and_report_medians(clip):
    src = clip("r.mp4", frames=6, size=(64, 48))
    r = run_bench(BenchConfig(input=src, model="bicubic", scale=2, device="cpu", frames=4,
                              repeats=3, encode=EncodeConfig(preset="ultrafast")))
    assert len(r.pipeline_runs) == len(r.serial_runs) == 3
    assert r.pipeline_fps == sorted(r.pipeline_runs)[1]
    assert r.serial_fps == sorted(r.serial_runs)[1]
    assert r.to_json()["serial_runs"] == list(r.serial_runs)


def test_bench_output_is_never_replaced_without_overwrite(clip, tmp_path):
    import av
    import pytest

    from vsr.errors import OutputError

    src = clip("b.mp4", frames=4, size=(64, 48))
    kept = tmp_path / "kept.mkv"
    kept.write_bytes(b"someone's file")
    cfg = dict(input=src, model="bicubic", scale=2, device="cpu", frames=3,
               encode=EncodeConfig(preset="ultrafast"), output=kept)
    with pytest.raises(OutputError):
        run_bench(BenchConfig(**cfg))
    assert kept.read_bytes() == b"someone's file"
    run_bench(BenchConfig(**cfg, overwrite=True))
    with av.open(str(kept)) as c:
        assert c.streams.video[0].codec_context.width == 128
