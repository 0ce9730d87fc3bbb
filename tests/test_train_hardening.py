"""`vsr train`, `vsr compress` and `vsr eval` against careless or hostile input, with real
files: nothing is overwritten, ignored, half written or silently wrong."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vsr.cli.main import cli
from vsr.errors import CheckpointError, ConfigError, InputError, OutputError
from vsr.imageio import write_image
from vsr.io.output import HOST_TAG
from vsr.models import DRN, CheckpointInfo, save_model
from vsr.models.checkpoint import read_info
from vsr.train import TrainConfig


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four 24x24 training images, a folder with one 8x8 image, and a tiny x2 DRN saved twice:
    as it is and with NaN weights (what a damaged file or a diverged run leaves)."""
    root = tmp_path_factory.mktemp("hardening")
    g = torch.Generator().manual_seed(5)
    (root / "hr").mkdir()
    for i in range(4):
        coarse = torch.rand(1, 3, 4, 4, generator=g)
        img = torch.nn.functional.interpolate(coarse, size=(24, 24), mode="bicubic")[0]
        write_image(root / "hr" / f"i{i}.png", (img.clamp(0, 1) * 255).round().to(torch.uint8))
    (root / "small").mkdir()
    write_image(root / "small" / "s.png", torch.zeros(3, 8, 8, dtype=torch.uint8))
    torch.manual_seed(0)
    net = DRN(scale=2, n_feats=4, n_blocks=[1])
    info = CheckpointInfo(arch="drn", hparams=net.hparams, scale=2, name="tiny-x2")
    save_model(root / "tiny.safetensors", net, info)
    with torch.no_grad():
        net.head.weight.fill_(float("nan"))
    save_model(root / "nan.safetensors", net, info)
    return {"root": root, "hr": root / "hr", "small": root / "small",
            "tiny": root / "tiny.safetensors", "nan": root / "nan.safetensors"}


def _train_args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["train", "--init", str(files["tiny"]), "--data", str(files["hr"]), "--out", str(out),
            "--iters", "2", "--batch-size", "2", "--patch", "8", "--threads", "1", "--json",
            *extra]


def test_a_new_run_never_replaces_files_in_its_out_folder(files: dict[str, Path],
                                                          tmp_path: Path) -> None:
    """--out on a folder holding another tool's config.json, or the weights of a finished run
    whose state was deleted, is refused with the files untouched; the config and metrics of a
    run stopped before its first save (no state: nothing to resume) start again."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"mine": 1}')
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "best.safetensors").write_bytes(b"the best weights of a long run")
    for out, name in ((foreign, "config.json"), (finished, "best.safetensors")):
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        got = CliRunner().invoke(cli, _train_args(files, out))
        assert isinstance(got.exception, ConfigError), got.output
        assert f"already holds {name}" in str(got.exception)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    early = tmp_path / "early"
    early.mkdir()
    cfg = TrainConfig(arch="drn", data=(str(files["hr"]),), out=str(early), iterations=9,
                      model_overrides=read_info(files["tiny"]).hparams)
    (early / "config.json").write_text(cfg.to_json())
    (early / "metrics.csv").write_text("step,loss\n5,0.3\n")
    got = CliRunner().invoke(cli, _train_args(files, early))
    assert got.exit_code == 0, got.output
    assert TrainConfig.load(early / "config.json").iterations == 2


def test_resume_refuses_options_it_would_ignore(files: dict[str, Path], tmp_path: Path) -> None:
    """The run's config.json decides what a resumed run computes: --iters, --lr or --data
    given with --resume used to be dropped without a word (the run 'finished' at its old
    plan); they are refused, naming them, and the run is left as it was."""
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, _train_args(files, run)).exit_code == 0
    config = (run / "config.json").read_text()
    got = CliRunner().invoke(cli, ["train", "--resume", str(run), "--iters", "50", "--lr", "1",
                                   "--threads", "1"])
    assert got.exit_code == 2, got.output
    assert "--iterations, --lr: fixed by the run's config.json" in got.output
    assert (run / "config.json").read_text() == config
    ok = CliRunner().invoke(cli, ["train", "--resume", str(run), "--threads", "1", "--json"])
    assert ok.exit_code == 0, ok.output


def test_nan_weights_are_refused_before_anything_is_written(files: dict[str, Path],
                                                            tmp_path: Path) -> None:
    """A checkpoint with NaN weights used to score 6 dB in vsr eval, export an artefact,
    leave a NaN search and pruned network behind in vsr compress, and start a training run
    that diverged at step 1: each now stops first with one CheckpointError naming the file."""
    nan = str(files["nan"])
    commands = {
        "eval": ["eval", "--data", str(files["hr"]), "--model", nan],
        "export": ["export", "--format", "torchscript", "--model", nan, "--height", "8",
                   "--width", "8", "-o", str(tmp_path / "m.pt")],
        "compress": ["compress", "--checkpoint", nan, "--ratio", "0.5", "--data",
                     str(files["hr"]), "--out", str(tmp_path / "compress"), "--patch", "8",
                     "--batch-size", "2", "--search-steps", "1", "--finetune-steps", "1",
                     "--dual-warmup", "1", "--prune-batches", "1", "--prune-batch-size", "2"],
        "train": _train_args(files, tmp_path / "train")[:2] + [nan] +
        _train_args(files, tmp_path / "train")[3:],
    }
    for name, args in commands.items():
        got = CliRunner().invoke(cli, args)
        assert isinstance(got.exception, CheckpointError), (name, got.output)
        assert "NaN or infinity" in str(got.exception) and nan in str(got.exception), name
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_val_data_is_checked_before_the_first_step(files: dict[str, Path],
                                                   tmp_path: Path) -> None:
    """An empty --val-data folder, or one with an image too small to score, used to fail at
    the first validation: after --val-every steps of training, with no state saved."""
    (tmp_path / "empty").mkdir()
    for folder, error in (("empty", "no images"), ("small", "too small to score")):
        val = tmp_path / "empty" if folder == "empty" else files["small"]
        out = tmp_path / f"run-{folder}"
        got = CliRunner().invoke(cli, _train_args(files, out, "--val-data", str(val)))
        assert isinstance(got.exception, InputError), got.output
        assert error in str(got.exception)
        assert not out.exists()


def test_a_full_disk_is_one_error_line_and_leaves_no_partial_state(files: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    """A real process whose files may not grow past 64 KiB (ulimit -f, as a full disk): the
    state of its first save does not fit. One Error line (it was an 'internal error' with
    safetensors' own message), exit 1, and neither a state nor a temporary file is left."""
    out = tmp_path / "run"
    limit = 64 * 1024

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    got = subprocess.run([sys.executable, "-m", "vsr", "train", "--arch", "drn-t-x2",
                          *_train_args(files, out)[3:]], capture_output=True, text=True,
                         timeout=120, preexec_fn=small_files)
    lines = [ln for ln in got.stderr.splitlines() if ln.strip()]
    assert got.returncode == 1, got.stderr
    assert lines[-1].startswith(f"Error: {out}: cannot write the state of step 2"), got.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.csv"]
    assert json.loads((out / "config.json").read_text())["iterations"] == 2


def test_compress_checks_its_val_data_before_the_first_stage(files: dict[str, Path],
                                                             tmp_path: Path) -> None:
    """An empty --val-data folder failed `vsr compress` only at its first validation, after
    the dual warm-up and --search-val-every search steps; now before any work is done."""
    from vsr.compress import CompressConfig, compress

    (tmp_path / "empty").mkdir()
    ticks = []
    for val, error in ((tmp_path / "empty", "no images"), (files["small"], "too small")):
        config = CompressConfig(checkpoint=str(files["tiny"]), ratio=0.5,
                                data=(str(files["hr"]),), out=str(tmp_path / "out"),
                                val_data=str(val), batch_size=2, patch=8, search_steps=2,
                                search_val_every=1, dual_warmup=1)
        with pytest.raises(InputError, match=error):
            compress(config, progress=lambda *a: ticks.append(a))
    assert ticks == [] and not (tmp_path / "out").exists()


def test_compress_on_a_full_disk_is_one_error_line(files: dict[str, Path],
                                                   tmp_path: Path) -> None:
    """Files may not grow past 100 KiB: search.json is written, the pruned network is not.
    One Error line naming the file (it was an 'internal error' with safetensors' message),
    exit 1; the finished stage's file stays for --stage prune, no temporary file is left."""
    weights = Path(__file__).parents[1] / "models" / "weights" / "drn-t-x2.safetensors"
    out = tmp_path / "out"
    limit = 100 * 1024

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    got = subprocess.run([sys.executable, "-m", "vsr", "compress", "--checkpoint", str(weights),
                          "--ratio", "0.5", "--data", str(files["hr"]), "--out", str(out),
                          "--batch-size", "2", "--patch", "8", "--search-steps", "1",
                          "--prune-batches", "1", "--prune-batch-size", "2",
                          "--finetune-steps", "1", "--dual-warmup", "1", "--threads", "1"],
                         capture_output=True, text=True, timeout=120, preexec_fn=small_files)
    lines = [ln for ln in got.stderr.splitlines() if ln.strip()]
    assert got.returncode == 1, got.stderr
    assert lines[-1].startswith(f"Error: {out}: cannot write pruned.safetensors ("), got.stderr
    assert sorted(p.name for p in out.iterdir()) == ["search.json", "summary.json"]


def test_an_empty_arch_is_named_not_taken_for_a_missing_one(files: dict[str, Path],
                                                            tmp_path: Path) -> None:
    """`--arch ''` (an unset shell variable) was reported as '--arch ... are required'."""
    got = CliRunner().invoke(cli, ["train", "--arch", "", "--data", str(files["hr"]), "--out",
                                   str(tmp_path / "run"), "--iters", "2", "--patch", "8"])
    assert got.exit_code != 0
    assert "unknown model" in str(got.exception) and "required" not in got.output, got.output
    assert not (tmp_path / "run").exists()


def _wait_for(ready: Callable[[], bool], proc: subprocess.Popen, what: str) -> None:
    """Poll until ``ready()`` while ``proc`` runs (a minute at most)."""
    deadline = time.monotonic() + 60
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"{what}: the process ended first ({proc.returncode})")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{what}: not within a minute")
        time.sleep(0.05)


def _held(folder: Path, proc: subprocess.Popen) -> Callable[[], bool]:
    """Whether ``proc`` holds ``folder`` (its pid in the lock), or 5 s passed since the
    folder appeared (a run that takes no lock: the check must fail, not wait)."""
    since: list[float] = []

    def ready() -> bool:
        try:
            if (folder / ".vsr.lock").read_text().startswith(f"{proc.pid} "):
                return True
        except OSError:
            pass
        if folder.is_dir() and not since:
            since.append(time.monotonic())
        return bool(since) and time.monotonic() - since[0] > 5

    return ready


def _stop(proc: subprocess.Popen, sig: int) -> int:
    try:
        proc.send_signal(sig)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_second_train_in_a_busy_run_folder_is_refused(files: dict[str, Path],
                                                        tmp_path: Path) -> None:
    """Two `vsr train` in one run folder at once (real processes): a second new run started
    before the first's first save passed the 'already holds a run' check, and a second
    --resume of a run being resumed started too; both then appended to metrics.csv and
    replaced each other's state (one died: 'cannot write the state of step 820 (No such file
    or directory)'). The second is refused with one error naming the holder; the first runs
    on untouched and stops resumable."""
    run = tmp_path / "run"
    long = ["--iters", "1000000", "--save-every", "1000000", "--log-every", "1000000"]
    first = subprocess.Popen([sys.executable, "-m", "vsr", *_train_args(files, run), *long],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(_held(run, first), first, "the first run's start")
    _wait_for((run / "config.json").exists, first, "the first run's first step")
    got = CliRunner().invoke(cli, _train_args(files, run))  # its own 2 steps if let in
    assert isinstance(got.exception, OutputError), got.output
    assert f"in use by another process (pid {first.pid}, vsr train)" in str(got.exception)
    assert TrainConfig.load(run / "config.json").iterations == 1_000_000
    assert not (run / "train_state.safetensors").exists()
    assert _stop(first, signal.SIGTERM) == 143  # stops with its state saved
    assert (run / "train_state.safetensors").exists()
    config_time = (run / "config.json").stat().st_mtime_ns
    resumed = subprocess.Popen([sys.executable, "-m", "vsr", "train", "--resume", str(run),
                                "--threads", "1"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    _wait_for(lambda: (run / "config.json").stat().st_mtime_ns != config_time, resumed,
              "the resumed run's start")  # it rewrites config.json once it holds the folder
    got = CliRunner().invoke(cli, ["train", "--resume", str(run), "--threads", "1",
                                   "--time-limit", "0.02", "--json"])
    assert isinstance(got.exception, OutputError), got.output
    assert f"(pid {resumed.pid}, vsr train)" in str(got.exception)
    assert _stop(resumed, signal.SIGTERM) == 143
    assert not (run / ".vsr.lock").exists()


def test_a_second_compress_on_a_busy_out_is_refused(files: dict[str, Path],
                                                    tmp_path: Path) -> None:
    """Two `vsr compress --out X` at once both ran, neither with --overwrite: the second
    replaced the first's search.json and networks (a pruned network of one search beside the
    record of the other). The second is refused; the lock a SIGKILLed run leaves behind does
    not refuse the next run."""
    out = tmp_path / "out"

    def args(steps: str) -> list[str]:
        return ["compress", "--checkpoint", str(files["tiny"]), "--ratio", "0.5", "--data",
                str(files["hr"]), "--out", str(out), "--patch", "8", "--batch-size", "2",
                "--search-steps", steps, "--finetune-steps", "1", "--dual-warmup", "1",
                "--prune-batches", "1", "--prune-batch-size", "2", "--threads", "1"]

    first = subprocess.Popen([sys.executable, "-m", "vsr", *args("1000000")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(_held(out, first), first, "the first compress's start")
    got = CliRunner().invoke(cli, args("1"))
    assert isinstance(got.exception, OutputError), got.output
    assert f"in use by another process (pid {first.pid}, vsr compress)" in str(got.exception)
    assert _stop(first, signal.SIGKILL) == -signal.SIGKILL
    assert os.listdir(out) == [".vsr.lock"]  # what the killed run left: not a refusal
    got = CliRunner().invoke(cli, args("1"))
    assert got.exit_code == 0, got.output
    assert sorted(os.listdir(out)) == ["compressed.safetensors", "pruned.safetensors",
                                       "search.json", "summary.json"]


def test_resume_past_a_garbled_metrics_csv(files: dict[str, Path], tmp_path: Path) -> None:
    """A crash or a full disk can leave metrics.csv with a cut line or NUL bytes at its end:
    `vsr train --resume` then stopped with 'internal error: ValueError: invalid literal for
    int()'. Such rows are left out (the state decides where the run is); the good ones stay
    and the plot is drawn from them."""
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, _train_args(files, run, "--log-every", "1")).exit_code == 0
    good = (run / "metrics.csv").read_text()
    assert good.count("\n") == 3  # the header, steps 1 and 2
    with (run / "metrics.csv").open("a") as fh:
        fh.write("2,0.5,x\n\0\0\0\0\n7,0.1,0.1,0.1,0,0,1e-4,9,1,,,,extra\n")
    (run / "metrics.png").unlink()
    got = CliRunner().invoke(cli, ["train", "--resume", str(run), "--threads", "1", "--json"])
    assert got.exit_code == 0, got.output
    assert (run / "metrics.csv").read_text() == good
    assert (run / "metrics.png").stat().st_size > 0


def test_validation_images_that_break_mid_run_keep_the_state(files: dict[str, Path],
                                                             tmp_path: Path) -> None:
    """A --val-data image damaged while the run trains (checked fine at the start) ended the
    run at the next validation with the steps since the last save lost, and no word of what
    the folder keeps. The state of that step is saved first and the error says so; once the
    images are fixed, --resume finishes the run."""
    from vsr.train import train

    val = tmp_path / "val"
    val.mkdir()
    for image in files["hr"].iterdir():
        (val / image.name).write_bytes(image.read_bytes())
    victim = val / "i2.png"
    good = victim.read_bytes()
    run = tmp_path / "run"
    config = TrainConfig(arch="drn", data=(str(files["hr"]),), out=str(run), iterations=4,
                         batch_size=2, patch=8, threads=1, val_data=str(val), val_every=2,
                         save_every=100, init=str(files["tiny"]),
                         model_overrides=read_info(files["tiny"]).hparams)

    def damage(report) -> None:  # after step 1: the validation of step 2 meets it
        if report.step == 1:
            victim.write_bytes(b"junk")

    with pytest.raises(InputError) as err:
        train(config, progress=damage)
    assert f"{victim}" in str(err.value)
    assert f"{run} keeps the state of step 2" in str(err.value)
    state = read_info(run / "train_state.safetensors").provenance["training_state"]
    assert state["step"] == 2
    victim.write_bytes(good)
    result = train(config, resume=True)
    assert result.steps == 4 and sorted(result.losses) == [3, 4]
    assert result.best_psnr is not None


def test_a_resume_on_a_full_disk_keeps_the_run_resumable(files: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """A resume rewrites config.json first; on a full disk (a real process whose files may not
    grow past 200 bytes) it was cut in place, and the run the error said it kept could no
    longer be resumed ('cannot read training config'). It is replaced whole or not at all."""
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, _train_args(files, run)).exit_code == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))

    got = subprocess.run([sys.executable, "-m", "vsr", "train", "--resume", str(run),
                          "--threads", "1"], capture_output=True, text=True, timeout=120,
                         preexec_fn=small_files)
    assert got.returncode == 1, got.stderr
    assert got.stderr.strip().splitlines()[-1].startswith(
        f"Error: {run}: cannot write config.json"), got.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    ok = CliRunner().invoke(cli, ["train", "--resume", str(run), "--threads", "1", "--json"])
    assert ok.exit_code == 0, ok.output


def test_temporary_files_of_killed_writes_are_removed(files: dict[str, Path],
                                                      tmp_path: Path) -> None:
    """A run SIGKILLed while it wrote a file whole (through a temporary file, then a rename)
    leaves that temporary file; the state's were removed by the next save or resume, these
    stayed for good (each as large as the model). The next run in the folder removes them."""
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, _train_args(files, run)).exit_code == 0
    kept = sorted(p.name for p in run.iterdir())
    gone = subprocess.Popen(["true"])  # a writer that has exited: its partials are stale
    gone.wait()
    writer = f"{gone.pid}.{HOST_TAG}89abcdef.partial"
    left = [".last.safetensors.k2j3h4x1.tmp", ".best.safetensors.a8f0q2zz.tmp",  # older names
            ".model-fp16.safetensors.0pq9r8st.tmp",
            "metrics.tmp", "metrics.tmp.png",
            f".last.{writer}.safetensors", f".model-fp16.{writer}.safetensors",
            f".metrics.{writer}.csv", f".metrics.{writer}.png", f".config.{writer}.json"]
    for name in left:
        (run / name).write_bytes(b"half a file")
    got = CliRunner().invoke(cli, ["train", "--resume", str(run), "--threads", "1", "--json"])
    assert got.exit_code == 0, got.output
    assert sorted(p.name for p in run.iterdir()) == kept

    out = tmp_path / "out"
    out.mkdir()
    for name in (".search.json.tmp", ".summary.json.tmp", ".pruned.safetensors.k2j3h4x1.tmp",
                 ".compressed.safetensors.a8f0q2zz.tmp", f".summary.{writer}.json",
                 f".pruned.{writer}.safetensors"):
        (out / name).write_bytes(b"half a file")
    got = CliRunner().invoke(cli, [
        "compress", "--checkpoint", str(files["tiny"]), "--ratio", "0.5", "--data",
        str(files["hr"]), "--out", str(out), "--patch", "8", "--batch-size", "2",
        "--search-steps", "1", "--finetune-steps", "1", "--dual-warmup", "1",
        "--prune-batches", "1", "--prune-batch-size", "2", "--threads", "1"])
    assert got.exit_code == 0, got.output
    assert sorted(os.listdir(out)) == ["compressed.safetensors", "pruned.safetensors",
                                       "search.json", "summary.json"]


def test_compress_stopped_by_sigterm_cleans_up(files: dict[str, Path], tmp_path: Path) -> None:
    """`vsr compress` kept SIGTERM's default action: the process died where it stood (exit
    -15, no Error line), leaving its new --out folder (and whatever it was writing) behind.
    It stops as on Ctrl-C: 'Error: interrupted (SIGTERM)', exit 143, nothing left."""
    out = tmp_path / "deep" / "out"
    proc = subprocess.Popen([sys.executable, "-m", "vsr", "compress", "--checkpoint",
                             str(files["tiny"]), "--ratio", "0.5", "--data", str(files["hr"]),
                             "--out", str(out), "--patch", "8", "--batch-size", "2",
                             "--search-steps", "1000000", "--dual-warmup", "1", "--threads",
                             "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(_held(out, proc), proc, "the compress's start")
        time.sleep(1)  # into the search
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "Error: interrupted (SIGTERM)"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
