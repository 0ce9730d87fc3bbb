"""precision="auto": the dtype each model runs in, and the CPU's bf16 path on real video."""

import numpy as np
import pytest
import torch

from vsr.device import cpu_has_native_bf16
from vsr.io.sink import EncodeConfig
from vsr.io.source import PyAVSource
from vsr.loading import auto_dtype
from vsr.upscale import UpscaleConfig, upscale_file

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
ALL = (F32, F16, BF16)
LOSSLESS = EncodeConfig(codec="ffv1", pix_fmt="yuv444p")


@pytest.mark.parametrize(("device", "network", "native", "depth", "want"), [
    ("cuda", True, False, 8, F16),
    ("cuda", False, False, 10, F16),  # bicubic too: fp16's significand holds 10 bits
    ("cuda", True, False, 12, F32),
    ("cpu", True, True, 8, BF16),
    ("cpu", True, True, 10, F32),  # bf16 holds 8 bits: a 10-bit source stays exact in fp32
    ("cpu", False, True, 8, F32),  # bicubic gains nothing from bf16
    ("cpu", True, False, 8, F32),  # emulated bf16 is slower than fp32
])
def test_auto_dtype_by_device_model_and_depth(device, network, native, depth, want):
    got = auto_dtype(torch.device(device), ALL, network=network, bit_depth=depth,
                     native_bf16=native)
    assert got == want


def test_auto_dtype_keeps_small_cpu_frames_in_fp32():
    """bf16 is slower than fp32 on small frames (144x176 here), faster from 240x320 up."""
    cpu = torch.device("cpu")
    for pixels, want in ((144 * 176, F32), (240 * 320, BF16), (360 * 640, BF16), (None, BF16)):
        assert auto_dtype(cpu, ALL, network=True, pixels=pixels, native_bf16=True) == want
    assert auto_dtype(torch.device("cuda"), ALL, network=True, pixels=16) == F16


def test_auto_dtype_stays_in_what_the_model_supports():
    assert auto_dtype(torch.device("cpu"), (F32,), network=True, native_bf16=True) == F32
    assert auto_dtype(torch.device("cuda"), (F32, BF16), network=True) == F32


def test_auto_precision_follows_the_backend_that_runs_the_model(monkeypatch):
    """onnxruntime runs fp32 only here: auto picks among what the backend runs, as the loader
    sees it (not a rule of one caller's), and an explicit precision it cannot run is refused."""
    import vsr.loading
    from vsr.engine import ModelCache
    from vsr.errors import ConfigError
    from vsr.loading import load_model
    from vsr.options import ModelOptions

    monkeypatch.setattr(vsr.loading, "cpu_has_native_bf16", lambda: True)
    pixels = 720 * 1280
    assert load_model("drn-t-x2-drc50", device="cpu", pixels=pixels).dtype == BF16
    assert load_model("drn-t-x2-drc50", device="cpu", pixels=pixels,
                      backend="onnx").dtype == F32
    with pytest.raises(ConfigError, match="onnx backend runs in fp32 only, not bf16"):
        load_model("drn-t-x2-drc50", device="cpu", precision="bf16", backend="onnx")
    cache = ModelCache()
    onnx = cache.handle(ModelOptions(model="drn-t-x2-drc50", backend="onnx"), "cpu",
                        pixels=pixels)
    eager = cache.handle(ModelOptions(model="drn-t-x2-drc50", backend="eager"), "cpu",
                         pixels=pixels)
    assert (onnx.dtype, eager.dtype) == (F32, BF16)
    assert cache.handle(ModelOptions(model="drn-t-x2-drc50", backend="auto"), "cpu",
                        pixels=pixels) is eager  # one handle where the choice is the same


def _frames(path) -> np.ndarray:
    with PyAVSource(path) as src:
        return np.stack([f.image for f in src.frames()]).astype(np.float64)


def test_default_model_on_the_cpu_in_each_precision(clip, tmp_path):
    """auto is bf16 exactly where the CPU has it; bf16 output stays close to fp32's (the shipped
    default, lossless output: 49 dB apart here, 4 levels at most)."""
    src = clip("in.mkv", frames=2, size=(256, 200))  # 51,200 px: large enough for bf16
    runs = {p: upscale_file(UpscaleConfig(input=src, output=tmp_path / f"{p}.mkv",
                                          device="cpu", precision=p, encode=LOSSLESS))
            for p in ("auto", "fp32", "bf16")}
    assert runs["auto"].precision == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert (runs["fp32"].precision, runs["bf16"].precision) == ("float32", "bfloat16")
    ref, half = _frames(tmp_path / "fp32.mkv"), _frames(tmp_path / "bf16.mkv")
    assert ref.shape == half.shape == (2, 400, 512, 3)
    diff = np.abs(ref - half)
    assert diff.max() <= 8 and 0 < (diff ** 2).mean() < 255 ** 2 / 10 ** 4.5  # over 45 dB


@pytest.mark.parametrize(("size", "pix_fmt"), [((256, 200), "yuv420p10le"),
                                              ((96, 64), "yuv420p")])
def test_deep_or_small_frames_stay_in_fp32_under_auto(clip, tmp_path, size, pix_fmt):
    src = clip("in.mkv", frames=2, size=size, pix_fmt=pix_fmt)
    run = upscale_file(UpscaleConfig(input=src, output=tmp_path / "o.mkv", device="cpu",
                                     encode=EncodeConfig(preset="ultrafast")))
    assert run.precision == "float32"


def test_eval_scores_fp32_unless_asked(tmp_path):
    """`vsr eval` scores the model itself (fp32) by default; --precision bf16 scores the bf16
    run, close to it but not the same, and the JSON says which."""
    import json

    from click.testing import CliRunner

    from vsr.cli.main import cli
    from vsr.imageio import write_image

    folder = tmp_path / "Tiny"
    folder.mkdir()
    g = torch.Generator().manual_seed(3)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 16, generator=g) * 255,
                                             size=(48, 64), mode="bilinear")
    write_image(folder / "a.png", smooth[0].round().to(torch.uint8))
    rows = {}
    for precision in (None, "bf16"):
        args = ["eval", "--data", str(folder), "--model", "drn-t-x2-drc50", "--device", "cpu",
                "--json", *(["--precision", precision] if precision else [])]
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        rows[precision] = json.loads(r.stdout)["results"][0]
    assert (rows[None]["precision"], rows["bf16"]["precision"]) == ("float32", "bfloat16")
    assert rows[None]["psnr"] != rows["bf16"]["psnr"]
    assert abs(rows[None]["psnr"] - rows["bf16"]["psnr"]) < 0.2


def test_uint8_output_of_a_bf16_handle_is_scaled_and_rounded_in_fp32():
    """bf16 holds integers only to 256 in steps that grow with size, so x255 in bf16 rounds
    once before round_(): a 42 dB clip lost 0.3 dB that way."""
    from vsr.loading import load_model

    handle = load_model("drn-t-x2-drc50", device="cpu", precision="bf16")
    x = torch.randint(0, 256, (1, 3, 24, 32), generator=torch.Generator().manual_seed(0),
                      dtype=torch.uint8)
    y = handle.upscale(x)
    float_out = handle.infer(x.to(torch.bfloat16) / 255.0).float().clamp(0, 1)
    assert torch.equal(y, float_out.mul(255).round().to(torch.uint8))
    twice = handle.infer(x.to(torch.bfloat16) / 255.0).clamp(0, 1).mul(255).round()
    assert not torch.equal(y, twice.to(torch.uint8))  # what rounding in bf16 gave


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_frame_still_bad_in_fp32_after_the_fallback_fails_the_run(drn_checkpoint, tmp_path,
                                                                     precision):
    """A network whose output is black in every precision (here its last layer drives every
    pixel negative): in fp32 the run fails at frame 0, but in bf16/fp16 on the CPU the frame
    was recomputed in fp32 and written black unchecked, a one-frame run (a picture) exit 0."""
    from PIL import Image

    from vsr.errors import PipelineError
    from vsr.models import load_network, read_info, save_model

    net, _ = load_network(drn_checkpoint)
    with torch.no_grad():
        for p in net.tails.parameters():
            p.zero_()
        net.tails[-1].bias.fill_(-5.0)
    ckpt = save_model(tmp_path / "black.safetensors", net, read_info(drn_checkpoint))
    src = tmp_path / "in.png"
    Image.fromarray(np.full((20, 30, 3), 180, np.uint8)).save(src)
    out = tmp_path / "out.png"
    for run_in in ("fp32", precision):
        with pytest.raises(PipelineError, match="frame 0: .*non-finite or black output"):
            upscale_file(UpscaleConfig(input=src, output=out, model=str(ckpt), device="cpu",
                                       precision=run_in))
        assert not out.exists()


def fp16_overflow_checkpoint(path):
    """A tiny DRN x2 checkpoint at ``path`` whose output on any picture is past fp16's range
    (65504): inf in fp16, so a run in fp16 falls back to fp32, where it is clipped."""
    from vsr.models import DRN, CheckpointInfo, save_model

    torch.manual_seed(0)
    net = DRN(scale=2, n_feats=4, n_blocks=[1])
    with torch.no_grad():
        for p in [*net.head.parameters(), *net.tails.parameters()]:
            p.mul_(1000)  # the weights themselves stay well inside it (at most ~200)
    return save_model(path, net, CheckpointInfo(arch="drn", hparams=net.hparams, scale=2,
                                                name="wide"))


def test_a_fallback_to_fp32_does_not_carry_over_to_the_next_file(tmp_path):
    """The fp32 fallback changes the handle itself: a batch worker's next file (the same
    ModelCache) ran in fp32 and said fallback_fp32 False. Each run now starts in the precision
    asked for, and falls back (and says so) on its own."""
    from PIL import Image

    from vsr.engine import ModelCache

    ckpt = fp16_overflow_checkpoint(tmp_path / "wide.safetensors")
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8)).save(src)
    models = ModelCache()
    for k in range(2):
        r = upscale_file(UpscaleConfig(input=src, output=tmp_path / f"out{k}.png",
                                       model=str(ckpt), device="cpu", precision="fp16"),
                         models=models)
        assert r.fallback_fp32 and r.fallback_frames == 1, (k, r)


def test_the_fp32_fallback_computes_with_the_weights_as_loaded(drn_checkpoint):
    """A handle loaded in bf16 that falls back to fp32 ran on its weights rounded to bf16's 8
    bits: an fp32 run, but not the model's. It now gets the weights as they were loaded."""
    import vsr

    exact = vsr.load_model(str(drn_checkpoint), device="cpu", precision="fp32")
    handle = vsr.load_model(str(drn_checkpoint), device="cpu", precision="bf16")
    want = exact.module.state_dict()
    rounded = {k: v.float() for k, v in handle.module.state_dict().items()}
    assert any(not torch.equal(rounded[k], v) for k, v in want.items())  # bf16 loses bits
    handle.to(dtype=torch.float32)
    got = handle.module.state_dict()
    assert all(got[k].dtype == torch.float32 and torch.equal(got[k], v) for k, v in want.items())
    x = torch.rand(1, 3, 12, 16)
    assert torch.equal(handle.infer(x), exact.infer(x))
    # weights changed in fp32 afterwards (an adaptation) are what the next round trip keeps
    with torch.no_grad():
        next(handle.module.parameters()).add_(0.125)
    changed = {k: v.clone() for k, v in handle.module.state_dict().items()}
    handle.to(dtype=torch.bfloat16).to(dtype=torch.float32)
    got = handle.module.state_dict()
    assert all(torch.equal(got[k], v) for k, v in changed.items())
