"""`vsr train --resume` reads the run's own data wherever it is started from, after the run
folder was moved, and without the --init file it started from (real files, real training)."""

from __future__ import annotations

import csv
import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_train_inputs import smooth_image

from vsr.cli.main import cli
from vsr.errors import ConfigError
from vsr.imageio import write_image
from vsr.models import DRN, CheckpointInfo, save_model
from vsr.models.checkpoint import read_info
from vsr.train import TrainConfig, train

torch.set_num_threads(1)


def _images(folder: Path, seed: int, n: int = 4, size: int = 64) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        write_image(folder / f"{i}.png", smooth_image(seed * 100 + i, size))
    return folder


def _config(data: str, out: str, **kw) -> TrainConfig:
    base = dict(arch="drn-t-x2", data=(data,), out=out, iterations=4, batch_size=2, patch=8,
                seed=1, log_every=1, save_every=1000, val_every=1000, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def _cut(config: TrainConfig, at: int = 2) -> None:
    """Train ``config`` and stop it at step ``at`` with its state saved (as Ctrl-C does)."""
    stop = threading.Event()

    def ask(rep) -> None:
        if rep.step == at - 1:
            stop.set()  # seen after the next step

    assert train(config, progress=ask, stop=stop).interrupted


def _resume(run: Path) -> dict:
    got = CliRunner().invoke(cli, ["train", "--resume", str(run), "--threads", "1", "--json"])
    assert got.exit_code == 0, got.output
    return json.loads(got.stdout.strip().splitlines()[-1])


def _losses(run: Path) -> dict[int, float]:
    with (run / "metrics.csv").open() as fh:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(fh)}


def test_resume_from_another_folder_trains_on_the_runs_own_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--data typed relative: config.json kept it as typed, and a resume started in another
    folder holding a folder of that name trained on those images (exit 0, another run)."""
    a, b = _images(tmp_path / "a" / "imgs", 0), _images(tmp_path / "b" / "imgs", 1)
    full = tmp_path / "full"
    train(_config(str(a), str(full)))
    monkeypatch.chdir(tmp_path / "a")
    _cut(_config("imgs", "run"))
    run = tmp_path / "a" / "run"
    assert json.loads((run / "config.json").read_text())["data"] == [str(a)]
    monkeypatch.chdir(b.parent)
    assert _resume(run)["steps"] == 4
    want, got = _losses(full), _losses(run)
    assert sorted(got) == [1, 2, 3, 4]
    for step in (3, 4):
        assert got[step] == pytest.approx(want[step], rel=1e-4), step


def test_a_moved_run_folder_takes_the_data_inside_it_along(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The docs say a run folder may be moved: data inside it ("not a folder: run/imgs"
    after the move) is found in its new place; data outside it, moved away, is one error
    naming the path and how to give it again, with the run left as it was."""
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "run" / "imgs", 0)
    _images(tmp_path / "val", 2)
    _cut(_config("run/imgs", "run", val_data="val"))
    moved = tmp_path / "elsewhere" / "run2"
    moved.parent.mkdir()
    (tmp_path / "run").rename(moved)
    monkeypatch.chdir(moved.parent)
    assert _resume(moved)["steps"] == 4
    config = json.loads((moved / "config.json").read_text())
    assert config["data"] == [str(moved / "imgs")] and config["out"] == str(moved)
    assert config["val_data"] == str(tmp_path / "val")

    again = tmp_path / "again"
    _images(tmp_path / "outside", 3)
    _cut(_config(str(tmp_path / "outside"), str(again)))
    shutil.move(tmp_path / "outside", tmp_path / "outside2")
    before = (again / "config.json").read_text()
    got = CliRunner().invoke(cli, ["train", "--resume", str(again), "--threads", "1"])
    assert isinstance(got.exception, ConfigError), got.output  # main(): one Error: line
    message = str(got.exception)
    assert str(tmp_path / "outside") in message and "no longer exists" in message
    assert f'write its new place into "data" in {again / "config.json"}' in message
    assert (again / "config.json").read_text() == before


def test_a_config_json_of_relative_paths_is_read_from_where_the_run_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs made before paths were stored absolute: the folder they were started from is
    known while the run folder's path ends with the --out given, so a resume from another
    folder still finds their data; a moved one is told to write the path out."""
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "imgs", 0)
    _cut(_config("imgs", "runs/x"))
    path = tmp_path / "runs" / "x" / "config.json"
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "data": ["imgs"], "out": "runs/x"}))
    _images(tmp_path / "runs" / "imgs", 1)  # what "imgs" means from runs/
    monkeypatch.chdir(tmp_path / "runs")
    _resume(Path("x"))
    assert json.loads(path.read_text())["data"] == [str(tmp_path / "imgs")]

    path.write_text(json.dumps({**raw, "data": ["imgs"], "out": "old/name"}))
    got = CliRunner().invoke(cli, ["train", "--resume", "x", "--threads", "1"])
    assert isinstance(got.exception, ConfigError), got.output
    assert "'imgs' is relative to the folder the run was started from" in str(got.exception)


def test_resume_does_not_need_the_init_checkpoint(tmp_path: Path) -> None:
    """--init is where a run starts; its state then holds the weights. A resume read the
    --init file again (and failed once it was gone) before the state replaced it."""
    data = _images(tmp_path / "imgs", 0)
    torch.manual_seed(0)
    net = DRN(scale=2, n_feats=8, n_blocks=[1])
    init = tmp_path / "init.safetensors"
    save_model(init, net, CheckpointInfo(arch="drn", hparams=net.hparams, scale=2, name="s"))
    run = tmp_path / "run"
    _cut(_config(str(data), str(run), arch="drn", init=str(init),
                 model_overrides=read_info(init).hparams))
    init.unlink()
    assert _resume(run)["steps"] == 4
