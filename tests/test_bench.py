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
