"""The library as an embedding program uses it: bad arguments are the library's own errors,
configs refuse what they cannot mean, and two threads get what one would."""

from __future__ import annotations

import copy
import math
import pickle
import threading
from pathlib import Path

import pytest
import torch

import vsr
from vsr.errors import ConfigError, ModelError, VsrError


@pytest.mark.parametrize("kwargs", [
    {"model": 5}, {"model": ""}, {"model": "bicubic", "scale": 0},
    {"model": "bicubic", "scale": 1}, {"model": "bicubic", "scale": True},
    {"model": "bicubic", "scale": 17},  # x100000 was a raw allocation error
    {"model": "bicubic", "scale": math.nan}, {"model": "bicubic", "scale": [2]},
    {"model": "bicubic", "scale": 2, "device": None},
    {"model": "bicubic", "scale": 2, "device": torch.device("meta")},
    {"model": "bicubic", "scale": 2, "backend": "nope"},
    {"model": "bicubic", "scale": 2, "bit_depth": "8"},
    {"model": "bicubic", "scale": 2, "pixels": -5},
])
def test_load_model_refuses_bad_arguments_with_config_error(kwargs) -> None:
    with pytest.raises(ConfigError):
        vsr.load_model(kwargs.pop("model"), precision="fp32", **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_asked_for_without_it_is_a_config_error_as_a_torch_device_too() -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        vsr.load_model("bicubic", scale=2, device=torch.device("cuda"))
    handle = vsr.load_model("bicubic", scale=2, device="cpu", precision="fp32")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        handle.to(device="cuda")
    assert handle.device == torch.device("cpu")


def test_infer_refuses_what_it_cannot_run_with_model_error(drn_checkpoint) -> None:
    handle = vsr.load_model(str(drn_checkpoint), device="cpu", precision="fp32")
    for bad in (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(3, 8, 8),
                torch.zeros(1, 3, 8, 8, dtype=torch.float64), [[0.0]]):
        with pytest.raises(ModelError):
            handle.infer(bad)
    assert handle.infer(torch.zeros(1, 3, 8, 8)).shape == (1, 3, 16, 16)


def test_infer_refuses_empty_frames_with_model_error(drn_checkpoint) -> None:
    """A frame 0 px high or wide was a RuntimeError from deep inside torch (the network) or
    a ValueError (bicubic): a library caller could not tell it from a crash."""
    net = vsr.load_model(str(drn_checkpoint), device="cpu", precision="fp32")
    bicubic = vsr.load_model("bicubic", scale=2, device="cpu", precision="fp32")
    for handle in (net, bicubic):
        for shape in ((1, 3, 0, 8), (1, 3, 8, 0), (2, 3, 0, 0)):
            with pytest.raises(ModelError, match="empty frames"):
                handle.infer(torch.zeros(shape))
        assert handle.infer(torch.zeros(0, 3, 8, 8)).shape == (0, 3, 16, 16)  # no frames


@pytest.mark.parametrize("field", ["overwrite", "deinterlace"])
@pytest.mark.parametrize("value", ["no", 0, None, math.nan])
def test_flags_must_be_booleans(tmp_path, field, value) -> None:
    # overwrite="no" read as True would replace an existing output
    with pytest.raises(ConfigError, match=field):
        vsr.UpscaleConfig(input=tmp_path / "in.mp4", output=tmp_path / "out.mp4",
                          **{field: value})
    if field == "deinterlace":
        with pytest.raises(ConfigError, match=field):
            vsr.JobOptions(deinterlace=value)


def test_an_unknown_option_is_a_config_error_naming_it(tmp_path) -> None:
    with pytest.raises(ConfigError, match="overwrites"):
        vsr.UpscaleConfig(input=tmp_path / "in.mp4", output=tmp_path / "out.mp4",
                          overwrites=True)
    with pytest.raises(ConfigError, match="tiles"):
        vsr.JobOptions(tiles=64)
    # copies, pickles and replacements still work
    config = vsr.UpscaleConfig(input=tmp_path / "in.mp4", output=tmp_path / "out.mp4",
                               model="bicubic", scale=2, overwrite=True)
    assert copy.deepcopy(config) == config == pickle.loads(pickle.dumps(config))
    assert vsr.JobOptions(crf=20).replace({"tile": 64}).tile == 64


def test_every_error_class_is_exported() -> None:
    import vsr.errors as errors

    classes = {name for name, value in vars(errors).items()
               if isinstance(value, type) and issubclass(value, VsrError)}
    assert classes <= set(vsr.__all__)


def test_two_threads_export_onnx_at_once(tmp_path, drn_checkpoint) -> None:
    """torch.onnx.export keeps process-global state: two at once used to fail each other (the
    onnx backend fell back to eager, and torch printed the graph on stdout)."""
    pytest.importorskip("onnxruntime")
    from vsr.backends import EngineCache, prepare

    handle = vsr.load_model(str(drn_checkpoint), device="cpu", precision="fp32")
    start = threading.Barrier(2)
    runners: list = []

    def build(i: int) -> None:
        start.wait()
        runners.append(prepare(handle, "onnx", (1, 3, 16, 24),
                               cache=EngineCache(tmp_path / f"cache{i}")))

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [(r.backend, list(r.notes)) for r in runners] == [("onnx", [])] * 2


def test_a_model_path_may_be_a_path_object(drn_checkpoint, tmp_path) -> None:
    """The argument checks take a pathlib.Path as they take its string (a library user's
    natural spelling of a file)."""
    assert vsr.load_model(Path(drn_checkpoint), device="cpu", precision="fp32").scale == 2
    config = vsr.UpscaleConfig(input=tmp_path / "in.mp4", output=tmp_path / "out.mp4",
                               model=Path(drn_checkpoint))
    assert Path(config.model) == Path(drn_checkpoint)


def _configs():
    from vsr.compress.config import CompressConfig
    from vsr.export import ExportConfig
    from vsr.train.config import TrainConfig

    train = {"arch": "drn-t-x2", "data": ("d",), "out": "o"}
    return [
        (vsr.UpscaleConfig, {"input": None, "output": "o.mp4"}),
        (vsr.UpscaleConfig, {"input": "i.mp4", "output": "o.mp4", "encode": "x"}),
        (vsr.BatchConfig, {"inputs": None, "output_dir": "out"}),
        (vsr.BatchConfig, {"inputs": ("a.mp4",), "output_dir": "out", "segment_frames": "300"}),
        (vsr.BatchConfig, {"inputs": ("a.mp4",), "output_dir": "out", "segment_frames": math.nan}),
        (vsr.BatchConfig, {"inputs": ("a.mp4",), "output_dir": "out", "options": "x"}),
        (vsr.BatchConfig, {"inputs": ("a.mp4",), "output_dir": "out", "overwrite": "no"}),
        (vsr.BatchConfig, {"inputs": ("a.mp4",), "output_dir": "out", "bogus": 1}),
        (vsr.StreamConfig, {"src": "a.ts", "dst": None}),
        (vsr.StreamConfig, {"src": "a.ts", "dst": "b.ts", "read_timeout_s": "5"}),
        (vsr.StreamConfig, {"src": "a.ts", "dst": "b.ts", "read_timeout_s": math.nan}),
        (vsr.EvalConfig, {"data": None, "baseline": "bicubic", "scale": 2}),
        (TrainConfig, {**train, "iterations": "10"}),
        (TrainConfig, {**train, "iterations": math.nan}),
        (TrainConfig, {**train, "adapt_degradation": None}),
        (TrainConfig, {**train, "seed": "x"}),
        (TrainConfig, {**train, "compile": "yes"}),
        (CompressConfig, {"checkpoint": "m.safetensors", "ratio": 0.5, "data": ("d",),
                          "out": "o", "finetune_steps": 2.5}),
        (ExportConfig, {"model": None, "format": "onnx", "output": None}),
    ]


@pytest.mark.parametrize("cls, kwargs", _configs(),
                         ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_every_config_refuses_wrong_types_with_config_error(cls, kwargs, tmp_path,
                                                            monkeypatch) -> None:
    """A None path, a str where a number goes, NaN, a misspelt field, a non-bool flag: a
    ConfigError at construction, never a TypeError there or an AttributeError in the run."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError):
        cls(**kwargs)


def test_one_path_where_a_list_goes_is_one_path(tmp_path) -> None:
    """A str is not taken letter by letter: EvalConfig(data="Set5") was 4 folders."""
    assert vsr.EvalConfig(data=str(tmp_path), baseline="bicubic", scale=2).data == (tmp_path,)
    assert vsr.BatchConfig(inputs="a.mp4", output_dir=tmp_path / "o",
                           devices="cpu").devices == ("cpu",)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_refused_move_leaves_the_handle_as_it_was() -> None:
    """handle.to(device="cuda", dtype=float16) without CUDA raised, but the handle said
    float16 from then on while its network stayed float32 (and ran float32)."""
    handle = vsr.load_model("drn-t-x2", precision="fp32", device="cpu")
    with pytest.raises(ConfigError):
        handle.to(device="cuda", dtype=torch.float16)
    assert handle.dtype == torch.float32 == next(handle.module.parameters()).dtype


def test_configs_are_refused_as_config_errors_when_mistyped(tmp_path) -> None:
    """Raw TypeErrors and AttributeErrors from deep inside, or a value in the wrong field:
    JobOptions("bicubic") put the name into codec; a Path model broke the batch
    ('PosixPath' object has no attribute 'endswith'); a missing field, a dict as a config, a
    progress that is no function."""
    with pytest.raises(ConfigError, match=r"JobOptions takes its options by name"):
        vsr.JobOptions("bicubic")
    assert vsr.JobOptions(model=tmp_path / "m.safetensors").model == str(
        tmp_path / "m.safetensors")
    vsr.JobOptions(model=tmp_path / "m.safetensors").fingerprint()  # JSON: was a TypeError
    with pytest.raises(ConfigError, match="UpscaleConfig needs output"):
        vsr.UpscaleConfig(input="a.mp4")
    for call, words in (
            (lambda: vsr.upscale_file({"input": "a", "output": "b"}),
             "config must be a UpscaleConfig, not {"),
            (lambda: vsr.run_batch({"inputs": ["b"]}), "config must be a BatchConfig"),
            (lambda: vsr.run_evaluation("ev"), "config must be an EvalConfig, not 'ev'"),
            (lambda: vsr.run_stream(None), "config must be a StreamConfig, not None"),
            (lambda: vsr.upscale_file(vsr.UpscaleConfig(input="a.mp4", output="b.mp4"),
                                      progress=5), "progress must be a function"),
            (lambda: vsr.upscale_file(vsr.UpscaleConfig(input="a.mp4", output="b.mp4"),
                                      models=5), "models must be a ModelCache")):
        with pytest.raises(ConfigError) as caught:
            call()
        assert str(caught.value).startswith(words), caught.value


def test_a_colour_picture_into_a_grey_format_says_so(tmp_path, caplog) -> None:
    import logging

    from PIL import Image

    Image.new("RGB", (8, 6), (200, 10, 10)).save(tmp_path / "rgb.png")
    with caplog.at_level(logging.WARNING):
        vsr.upscale_file(vsr.UpscaleConfig(input=tmp_path / "rgb.png",
                                           output=tmp_path / "o.pgm", model="bicubic", scale=2))
    assert "rgb.png: its colour is dropped: a .pgm picture holds grey only" in caplog.text


def test_float_frames_out_of_range_and_misspelt_encoder_settings_are_refused() -> None:
    """Float frames of 0..255 came out white all over (clamped), NaN frames came out NaN,
    silently; EncodeConfig(crff=20) was a raw TypeError."""
    handle = vsr.load_model("bicubic", scale=2)
    with pytest.raises(ModelError, match=r"values in \[0, 1\], got up to 255"):
        handle.upscale(torch.full((1, 3, 4, 4), 255.0))
    with pytest.raises(ModelError, match="NaN or infinity"):
        handle.upscale(torch.full((1, 3, 4, 4), float("nan")))
    assert handle.upscale(torch.full((1, 3, 4, 4), 0.5)).shape == (1, 3, 8, 8)
    with pytest.raises(ConfigError, match="unknown option.s. crff for EncodeConfig"):
        vsr.EncodeConfig(crff=20)
