"""What a new user met (the newcomer review of 2026-12-02): options that could not be fed back,
defaults that differ between the library and the CLI, options silently ignored or clamped,
grammar on single items, and lines that read wrongly."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import types
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_clip
from PIL import Image

from vsr.errors import ConfigError, Interrupted


def _picture(path: Path, size: tuple[int, int] = (24, 16)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


# item 8: the precision --json names is one --precision takes

@pytest.mark.parametrize(("given", "canonical"), [("float32", "fp32"), ("bfloat16", "bf16"),
                                                  ("float16", "fp16"), ("fp16", "fp16"),
                                                  ("auto", "auto")])
def test_the_json_precision_names_are_taken_and_held_as_the_short_name(given, canonical):
    from vsr.export import ExportConfig
    from vsr.options import ModelOptions
    from vsr.upscale import UpscaleConfig

    assert ModelOptions(precision=given).precision == canonical
    assert UpscaleConfig(input="a.mp4", output="b.mp4", precision=given).precision == canonical
    if canonical in ("auto", "fp32"):
        assert ExportConfig(model=None, format="onnx", output="m.onnx",
                            precision=given).precision == canonical
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, fp16, bf16"):
        ModelOptions(precision="float64")


def test_the_cli_takes_a_json_precision_name(cli_error, tmp_path):
    """`--precision float32` was click's 'invalid choice': here the run gets as far as the
    input (which is missing)."""
    line = cli_error("upscale", str(tmp_path / "nosuch.mp4"), str(tmp_path / "o.mp4"),
                     "--precision", "float32")
    assert "input not found" in line, line


# item 9: vsr train's learning rate is the one of the model cards and docs/training.md

def test_train_defaults_to_the_recipe_learning_rate_and_every_option_has_help():
    from vsr.cli.compress import compress
    from vsr.cli.train import train
    from vsr.train import TrainConfig

    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert (fields["lr"], fields["lr_min"]) == (1e-3, 1e-6)
    params = {p.name: p for p in train.params}
    assert (params["lr"].default, params["lr_min"].default) == (fields["lr"], fields["lr_min"])
    for command in (train, compress):
        bare = [p.opts[0] for p in command.params
                if isinstance(p, click.Option) and not p.help]
        assert not bare, f"{command.name}: {bare} have no help text"


# item 10: vsr batch shows its progress as vsr upscale does: on a terminal

def test_batch_progress_defaults_to_a_terminal_as_upscale(clip, tmp_path):
    from vsr.cli.batch import batch
    from vsr.cli.upscale import upscale

    def progress_default(command):
        return next(p for p in command.params if p.name == "progress").default

    assert progress_default(batch) is None and progress_default(upscale) is None
    src = clip("a.mp4", frames=3)
    r = CliRunner().invoke(batch, [str(src), "-o", str(tmp_path / "out"), "--model", "bicubic",
                                   "--scale", "2"])
    assert r.exit_code == 0, r.output
    assert "files " not in r.stderr and r.stderr.startswith("1 done"), r.stderr
    r = CliRunner().invoke(batch, [str(src), "-o", str(tmp_path / "out2"), "--model",
                                   "bicubic", "--scale", "2", "--progress"])
    assert r.stderr.startswith("files "), r.stderr


# item 17: encoding options for a picture are said to be unused

def test_encoding_options_for_a_picture_are_a_warning_and_a_note(tmp_path, caplog):
    from vsr.io.sink import EncodeConfig
    from vsr.upscale import UpscaleConfig, upscale_file

    src = _picture(tmp_path / "a.png")
    caplog.set_level(logging.WARNING, logger="vsr")
    result = upscale_file(UpscaleConfig(input=src, output=tmp_path / "o.png", model="bicubic",
                                        scale=2, encode=EncodeConfig(codec="libx265", crf=10)))
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1 and "codec libx265, crf 10" in said[0] \
        and "not used for a picture" in said[0] and "\n" not in said[0], said
    assert said[0] in result.notes
    caplog.clear()  # the defaults say nothing
    result = upscale_file(UpscaleConfig(input=src, output=tmp_path / "p.png", model="bicubic",
                                        scale=2))
    assert not caplog.records and result.notes == ()


# item 18: a CRF outside the encoder's range is refused, not clamped

@pytest.mark.parametrize(("codec", "top"), [("libx264", 51), ("libx265", 51),
                                            ("libvpx-vp9", 63), ("libsvtav1", 63),
                                            ("libaom-av1", 63)])
def test_crf_is_checked_against_the_encoders_range(codec, top):
    from vsr.io.sink import EncodeConfig

    assert EncodeConfig(codec=codec, crf=top).crf == top
    assert EncodeConfig(codec=codec, crf=0).crf == 0
    if top < 63:
        with pytest.raises(ConfigError, match=f"crf must be an integer in 0..{top} for {codec}"):
            EncodeConfig(codec=codec, crf=top + 1)


@pytest.mark.parametrize("command", ["upscale", "stream", "batch"])
def test_crf_60_for_libx264_is_one_error_line(command, cli_error, clip, tmp_path):
    src = clip("a.mp4", frames=2)
    out = ["-o", str(tmp_path / "out")] if command == "batch" else [str(tmp_path / "o.mp4")]
    line = cli_error(command, str(src), *out, "--model", "bicubic", "--scale", "2", "--crf",
                     "60")
    assert line == "Error: crf must be an integer in 0..51 for libx264, got 60", line


# item 24: the library's stream defaults to the CLI's deflicker

def test_stream_config_defaults_to_the_cli_deflicker():
    from vsr.cli.stream import stream
    from vsr.stream import StreamConfig

    config = StreamConfig(src="a.ts", dst="b.ts")
    assert config.deflicker == 0.5
    assert next(p for p in stream.params if p.name == "deflicker").default == config.deflicker
    assert StreamConfig(src="a.ts", dst="b.ts", deflicker=0.0).deflicker == 0.0


# item 25: {model} names the model used

def test_the_model_field_of_a_name_is_the_default_models_name():
    from vsr.jobs.plan import Entry, JobOptions, render_name
    from vsr.models import DEFAULT_MODEL

    got = render_name("{model}/{stem}{suffix}", Entry(Path("a.mp4")), JobOptions(), 0)
    assert got == Path(DEFAULT_MODEL) / "a.mp4"
    got = render_name("{model}/{stem}{suffix}", Entry(Path("a.mp4")),
                      JobOptions(model="bicubic", scale=2), 0)
    assert got == Path("bicubic/a.mp4")


# item 32: one, not ones

def test_counts_of_one_are_singular(tmp_path):
    from vsr.cli.upscale import upscale
    from vsr.options import plural

    assert (plural(1, "frame"), plural(0, "frame"), plural(2, "file")) \
        == ("1 frame", "0 frames", "2 files")
    src = _picture(tmp_path / "a.png")
    r = CliRunner().invoke(upscale, [str(src), str(tmp_path / "o.png"), "--model", "bicubic",
                                     "--scale", "2"])
    assert r.exit_code == 0 and r.stderr.startswith("1 frame -> "), r.output


def test_batch_summary_of_one_segment_is_singular(clip, tmp_path):
    from vsr.cli.batch import batch

    src = clip("a.mp4", frames=3)
    r = CliRunner().invoke(batch, [str(src), "-o", str(tmp_path / "out"), "--model", "bicubic",
                                   "--scale", "2"])
    assert r.exit_code == 0, r.output
    assert "; 1 segment computed, 0 reused, 3 frames in " in r.stderr, r.stderr


# item 37: an export's file name says its format

@pytest.mark.parametrize(("fmt", "name"), [("onnx", "in.mp4"), ("onnx", "m.pt"),
                                           ("torchscript", "m.onnx2.txt"),
                                           ("torchscript", "m.onnx"), ("tensorrt", "m.onnx")])
def test_export_refuses_a_suffix_of_another_format(fmt, name):
    from vsr.export import ExportConfig

    with pytest.raises(ConfigError, match=f"a {fmt} export is written to a "):
        ExportConfig(model=None, format=fmt, output=name)


@pytest.mark.parametrize(("fmt", "name"), [("onnx", "m.onnx"), ("onnx", "M.ONNX"),
                                           ("torchscript", "m.pt"), ("torchscript", "m.ts"),
                                           ("torchscript", "m.pth"), ("tensorrt", "m.ep")])
def test_export_takes_its_formats_suffixes(fmt, name):
    from vsr.export import ExportConfig

    assert ExportConfig(model=None, format=fmt, output=name).output == Path(name)


# item 41: a stopped vsr train says only its Error line

def test_a_stopped_train_prints_only_its_error_line(monkeypatch, tmp_path, capsys):
    import vsr
    import vsr.cli.main as cli_main
    import vsr.train
    import vsr.train.trainer

    def stopped(config, **_):
        return types.SimpleNamespace(interrupted=True)

    summary = {"run_dir": str(tmp_path / "run"), "steps": 76, "iterations": 2000,
               "stopped_at_time_limit": False, "interrupted": True, "final_loss": 0.1,
               "best_val_psnr": None, "seconds": 5.56, "samples_per_s": 1.0,
               "flops_per_sample": 1, "tflops": 0.0, "peak_tflops": None, "fp16_model": False,
               "mfu": None}
    monkeypatch.setattr(vsr.train, "train", stopped)
    monkeypatch.setattr(vsr.train.trainer, "summary", lambda result: summary)
    monkeypatch.setattr(vsr, "configure_runtime", lambda **_: None)
    monkeypatch.setattr(cli_main, "_startup_stop", None)

    def exit_stopped(code: int) -> None:  # os._exit there: the test process would end
        raise SystemExit(code)

    monkeypatch.setattr(cli_main, "_exit_stopped", exit_stopped)
    data = tmp_path / "hr"
    data.mkdir()
    monkeypatch.setattr("sys.argv", ["vsr", "train", "--arch", "drn-t-x2", "--data", str(data),
                                     "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exc:
        cli_main.main()
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert exc.value.code == 130 and not out, (out, err)
    assert len(lines) == 1 and lines[0].startswith("Error: stopped at step 76 of 2000"), err


# item 5: a rerun without --resume says what it discards

def test_a_rerun_without_resume_says_it_discards_finished_segments(tmp_path, caplog):
    from vsr.jobs import BatchConfig, JobOptions, run_batch

    src = make_clip(tmp_path / "a.mp4", frames=120, size=(160, 120), color={"gop_size": 10})
    out = tmp_path / "out"
    config = BatchConfig(inputs=(str(src),), output_dir=out, devices=("cpu",),
                         options=JobOptions(model="bicubic", scale=2), segment_frames=10)

    def stop_after_two_segments(progress) -> None:
        if progress.frames_done >= 20:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):  # with the file unfinished
        run_batch(config, progress=stop_after_two_segments)
    with sqlite3.connect(f"file:{out / '.vsr-batch' / 'jobs.sqlite'}?mode=ro", uri=True) as db:
        kept = db.execute("SELECT count(*) FROM segments WHERE status = 'done'").fetchone()[0]
    assert kept >= 2
    caplog.set_level(logging.WARNING, logger="vsr")
    result = run_batch(config)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said == [f"a.mp4: {kept} finished segments of an interrupted run discarded "
                    "(--resume reuses them)"], said
    assert (result.segments_discarded, result.segments_reused, len(result.done)) == (kept, 0, 1)


def test_eval_progress_counts_images_or_frames_in_the_singular_for_one(capsys):
    from vsr.cli.evaluate import _StderrProgress
    from vsr.evaluate import Progress

    _StderrProgress()(Progress("Set1", 1, 1, "a.png", 30.0, 0.9))
    _StderrProgress(unit="frame")(Progress("clip", 8, 8, "frame 8", 30.0, 0.9))
    assert capsys.readouterr().err.splitlines() == ["Set1: 1 image scored",
                                                    "clip: 8 frames scored"]


# the review: click names the nearest option of a mistyped one, not the nearest command

@pytest.mark.parametrize(("typed", "meant"), [("upscal", "upscale"), ("evla", "eval"),
                                              ("stram", "stream")])
def test_a_mistyped_command_names_the_nearest_one(cli_error, typed, meant):
    line = cli_error(typed, "in.mp4", code=2)
    assert f"No such command '{typed}'; did you mean '{meant}'?" in line, line


def test_a_word_near_no_command_is_only_refused(cli_error):
    line = cli_error("xyzzy", code=2)
    assert "No such command 'xyzzy'." in line and "did you mean" not in line, line
