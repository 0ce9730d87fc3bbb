"""Every config class refuses a bad option when it is constructed, with ConfigError, before any
model loads or file opens; the shared options fail the same way in every one of them."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from vsr.errors import ConfigError

# every module that declares a job's config dataclass (the test below checks none is missed)
MODULES = ("vsr.options", "vsr.upscale", "vsr.bench", "vsr.stream.run", "vsr.jobs.plan",
           "vsr.jobs.runner", "vsr.evaluate", "vsr.video_eval", "vsr.export",
           "vsr.compress.config", "vsr.train.config", "vsr.io.sink")

# class name -> the smallest valid keyword arguments
VALID: dict[str, dict] = {
    "ModelOptions": {},
    "RunOptions": {},
    "UpscaleConfig": {"input": "in.mp4", "output": "out.mkv"},
    "BenchConfig": {"input": "in.mp4"},
    "StreamConfig": {"src": "udp://127.0.0.1:5000", "dst": "out.ts"},
    "JobOptions": {},
    "BatchConfig": {"inputs": ("a.mp4",), "output_dir": "out"},
    "EvalConfig": {"data": ("Set5",), "model": "bicubic", "scale": 2},
    "VideoEvalConfig": {"videos": ("a.mp4",), "model": "bicubic", "scale": 2},
    "ExportConfig": {"model": None, "format": "onnx", "output": "m.onnx"},
    "CompressConfig": {"checkpoint": "m.safetensors", "ratio": 0.5, "data": ("hr",),
                       "out": "o"},
    "TrainConfig": {"arch": "drn-t-x2", "data": ("hr",), "out": "o"},
    "EncodeConfig": {},
}

# a bad value for each shared option, wherever a config has that field
BAD_SHARED = {"precision": "fp8", "scale": 1, "device": "tpu", "tile": 8, "backend": "fast",
              "batch": 0}

# a bad option of each class's own (for the classes without any shared field)
BAD_OWN: dict[str, dict] = {
    "ModelOptions": {"model": "", "scale": True},  # "" is no model name; True is no scale
    "BatchConfig": {"devices": ()},
    "EncodeConfig": {"crf": 99},
    "StreamConfig": {"drop": "newest"},
    "BenchConfig": {"frames": 1, "output": "kept.png"},  # a video is kept, not an image
    "UpscaleConfig": {"decoder": "opencv"},
    "ExportConfig": {"format": "tflite", "model": ""},
    "CompressConfig": {"ratio": 1.5},
    "TrainConfig": {"data": ()},
    "EvalConfig": {"data": (), "model": ""},
    "VideoEvalConfig": {"videos": (), "model": ""},
}


def _config_classes() -> dict[str, type]:
    found = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (isinstance(value, type) and dataclasses.is_dataclass(value)
                    and value.__module__ == name and attr.endswith(("Config", "Options"))):
                found[attr] = value
    return found


CLASSES = _config_classes()


def test_every_config_class_is_covered() -> None:
    assert set(CLASSES) == set(VALID)


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_options_construct(name: str) -> None:
    CLASSES[name](**VALID[name])


CASES = [(name, field, value) for name in sorted(VALID)
         for field, value in BAD_SHARED.items()
         if field in {f.name for f in dataclasses.fields(CLASSES[name])}]
CASES += [(name, field, value) for name, own in sorted(BAD_OWN.items())
          for field, value in own.items()]


@pytest.mark.parametrize("name, field, value", CASES,
                         ids=[f"{n}-{f}" for n, f, _ in CASES])
def test_bad_option_fails_at_construction(name: str, field: str, value: object) -> None:
    with pytest.raises(ConfigError):
        CLASSES[name](**{**VALID[name], field: value})


@pytest.mark.parametrize("name", ["UpscaleConfig", "BenchConfig", "StreamConfig", "JobOptions",
                                  "ExportConfig"])
def test_precision_message_is_the_same_everywhere(name: str) -> None:
    with pytest.raises(ConfigError, match=r"precision must be one of auto, fp32, fp16, bf16, "
                                          r"not 'fp8'"):
        CLASSES[name](**{**VALID[name], "precision": "fp8"})


def test_batch_options_carry_backend_and_batch() -> None:
    from vsr.jobs import JobOptions

    opts = JobOptions().replace({"backend": "onnx", "batch": 2})
    assert (opts.backend, opts.batch) == ("onnx", 2)
    assert opts.fingerprint() != JobOptions().fingerprint()
    with pytest.raises(ConfigError):
        JobOptions().replace({"backend": "fast"})


def test_backend_choices_are_the_backends() -> None:
    """The names options accept are exactly the backends there are (plus auto)."""
    from vsr.backends import BACKENDS, CHOICES
    from vsr.options import BACKEND_CHOICES

    assert CHOICES == BACKEND_CHOICES == ("auto", *BACKENDS)


def test_a_manifest_override_of_an_unknown_option_fails_as_the_constructor_does() -> None:
    """JobOptions.replace (a manifest line's overrides) kept its own copy of Config's
    unknown-option check, which said it differently ('unknown option(s) crff; known: ...',
    without the class): one check, one message."""
    from vsr.jobs.plan import JobOptions

    with pytest.raises(ConfigError) as built:
        JobOptions(crff=20, preset="fast")
    with pytest.raises(ConfigError) as replaced:
        JobOptions().replace({"crff": 20, "preset": "fast"})
    assert str(replaced.value) == str(built.value)
    known = ", ".join(sorted(f.name for f in dataclasses.fields(JobOptions)))
    assert str(built.value) == f"unknown option(s) crff for JobOptions; known: {known}"
    assert JobOptions().replace({"crf": 20}).crf == 20
