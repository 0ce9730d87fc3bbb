"""Dual regression training: learning, exact resume, the dual term, DDP, adaptation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vsr.errors import ConfigError
from vsr.imageio import write_image
from vsr.models import DRN, DualNetworks, load_model
from vsr.models.checkpoint import read_info
from vsr.train import TrainConfig, train
from vsr.train.data import lr_pyramid
from vsr.train.losses import dual_regression_loss

TINY = {"n_feats": 4, "n_blocks": [1]}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight smooth synthetic 40x40 images: learnable structure, no downloads."""
    folder = tmp_path_factory.mktemp("hr")
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 40), torch.linspace(0, 1, 40), indexing="ij")
    for i in range(8):
        f = torch.rand(3, 3, generator=g) * 6 + 1
        img = torch.stack([torch.sin(f[c, 0] * xx + f[c, 1] * yy + f[c, 2]) for c in range(3)])
        write_image(folder / f"img{i}.png", ((img * 0.5 + 0.5) * 255).round().to(torch.uint8))
    return folder


def _config(images: Path, out: Path, **kw) -> TrainConfig:
    base = dict(arch="drn-t-x2", data=(str(images),), out=str(out), iterations=30,
                batch_size=4, patch=8, lr=2e-3, lr_min=1e-4, seed=3, log_every=5,
                save_every=1000, val_every=1000, threads=1, model_overrides=dict(TINY))
    base.update(kw)
    return TrainConfig(**base)


def test_loss_decreases_and_run_folder_is_complete(images: Path, tmp_path: Path) -> None:
    result = train(_config(images, tmp_path / "run", iterations=40))
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    run = tmp_path / "run"
    for name in ("config.json", "metrics.csv", "metrics.png", "train_state.safetensors",
                 "last.safetensors", "model-fp16.safetensors"):
        assert (run / name).is_file(), name
    assert TrainConfig.load(run / "config.json") == _config(images, run, iterations=40)
    handle = load_model(run / "model-fp16.safetensors")
    assert handle.scale == 2 and handle.module.hparams["n_feats"] == 4


class _Stop(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run(images: Path, tmp_path: Path) -> None:
    n, m = 12, 8
    full = train(_config(images, tmp_path / "full", iterations=n + m))

    def stop_at_n(rep) -> None:
        if rep.step == n:
            raise _Stop  # like a crash right after the checkpoint of step n

    with pytest.raises(_Stop):
        train(_config(images, tmp_path / "cut", iterations=n + m, save_every=n),
              progress=stop_at_n)
    resumed = train(_config(images, tmp_path / "cut", iterations=n + m), resume=True)
    assert min(resumed.losses) == n + 1
    for step in range(n + 1, n + m + 1):
        assert abs(resumed.losses[step] - full.losses[step]) < 1e-5, step
    assert len((tmp_path / "cut" / "metrics.csv").read_text().splitlines()) == \
        len((tmp_path / "full" / "metrics.csv").read_text().splitlines())


def test_existing_run_is_not_overwritten_and_missing_run_not_resumed(images: Path,
                                                                     tmp_path: Path) -> None:
    cfg = _config(images, tmp_path / "r", iterations=2)
    train(cfg)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg)
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(_config(images, tmp_path / "none", iterations=2), resume=True)


def test_dual_loss_is_present_and_weighted_by_lambda() -> None:
    torch.manual_seed(0)
    primal = DRN(scale=4, **{"n_feats": 4, "n_blocks": [1, 1]})
    duals = DualNetworks(phase=2, width=4)
    pyramid = lr_pyramid(torch.rand(2, 3, 32, 32), 4)
    assert [p.shape[-1] for p in pyramid] == [8, 16, 32]
    for lam in (0.0, 0.1, 1.0):
        loss = dual_regression_loss(primal, duals, pyramid, lam)
        assert loss.dual.item() > 0
        torch.testing.assert_close(loss.total, loss.primal + lam * loss.dual)
        duals.zero_grad()
        loss.total.backward()
        grad = sum(p.grad.abs().sum().item() for p in duals.parameters())
        assert (grad > 0) == (lam > 0)


def test_metrics_csv_total_is_primal_plus_lambda_dual(images: Path, tmp_path: Path) -> None:
    import csv

    train(_config(images, tmp_path / "l", iterations=5, log_every=1, dual_lambda=0.5))
    rows = list(csv.DictReader((tmp_path / "l" / "metrics.csv").open()))
    for r in rows:
        assert float(r["dual"]) > 0
        assert abs(float(r["loss"]) - float(r["primal"]) - 0.5 * float(r["dual"])) < 1e-4


def test_two_process_gloo_ddp_matches_one_process(images: Path, tmp_path: Path) -> None:
    k = 6
    one = train(_config(images, tmp_path / "one", iterations=k, batch_size=4))
    two = train(_config(images, tmp_path / "two", iterations=k, batch_size=4), nproc=2)
    for step in range(1, k + 1):
        assert abs(one.losses[step] - two.losses[step]) < 1e-4, step


def test_adaptation_uses_unpaired_frames(images: Path, tmp_path: Path) -> None:
    from tests.conftest import make_clip

    clip = make_clip(tmp_path / "lr.mp4", frames=6, size=(64, 48))
    result = train(_config(images, tmp_path / "a", iterations=4, adapt=(str(clip),),
                           adapt_batch=2, log_every=1))
    assert len(result.losses) == 4
    import csv

    rows = list(csv.DictReader((tmp_path / "a" / "metrics.csv").open()))
    assert all(float(r["adapt"]) > 0 for r in rows)


def test_adaptation_through_a_known_or_estimated_kernel(images: Path, tmp_path: Path) -> None:
    """gaussian:S and auto close the unpaired loop through a Gaussian (recorded in the
    checkpoint), dual through the learned duals: the adaptation terms differ."""
    import csv

    from tests.conftest import make_clip
    clip = make_clip(tmp_path / "lr.mp4", frames=6, size=(64, 48))
    adapt = {}
    for name, deg in (("g", "gaussian:1.5"), ("d", "dual"), ("a", "auto")):
        train(_config(images, tmp_path / name, iterations=2, adapt=(str(clip),), adapt_batch=2,
                      log_every=1, adapt_degradation=deg))
        rows = list(csv.DictReader((tmp_path / name / "metrics.csv").open()))
        adapt[name] = float(rows[0]["adapt"])
        prov = read_info(tmp_path / name / "last.safetensors").provenance
        recorded = prov["adapt_degradation"]
        assert (prov["lr"], prov["lr_min"], prov["batch_size"], prov["patch"]) == (2e-3, 1e-4, 4, 8)
        if name == "a":
            assert recorded.startswith("gaussian:"), recorded
        else:
            assert recorded == deg
    assert adapt["g"] > 0 and adapt["d"] > 0 and abs(adapt["g"] - adapt["d"]) > 1e-4
    with pytest.raises(ConfigError, match="gaussian"):
        _config(images, tmp_path / "x", adapt_degradation="box:2")


def test_init_from_a_training_state_loads_its_duals(images: Path, tmp_path: Path) -> None:
    from vsr.models.checkpoint import load_tensors
    from vsr.train.trainer import STATE_FILE, Trainer

    train(_config(images, tmp_path / "a", iterations=3))
    state = tmp_path / "a" / STATE_FILE
    tensors, _ = load_tensors(state)
    trainer = Trainer(_config(images, tmp_path / "b", iterations=1, init=str(state)))
    duals = trainer.duals.state_dict()
    assert duals and all(torch.equal(v, tensors[f"dual.{k}"]) for k, v in duals.items())
    fresh = Trainer(_config(images, tmp_path / "c", iterations=1)).duals.state_dict()
    assert not all(torch.equal(v, fresh[k]) for k, v in duals.items())


def test_init_without_arch_trains_the_checkpoints_own_network(images: Path,
                                                              tmp_path: Path) -> None:
    """A network off the registry (here TINY's widths) trains from its checkpoint alone: the
    CLI takes its family and hparams from the file; naming a registry model of other widths
    with it is refused in one line."""
    from click.testing import CliRunner

    from vsr.cli.main import cli
    from vsr.models.checkpoint import load_tensors

    train(_config(images, tmp_path / "a", iterations=2))
    start = tmp_path / "a" / "last.safetensors"
    args = ["train", "--init", str(start), "--data", str(images), "--out", str(tmp_path / "b"),
            "--iters", "2", "--batch-size", "2", "--patch", "8", "--threads", "1", "--json"]
    got = CliRunner().invoke(cli, args)
    assert got.exit_code == 0, got.output
    info = read_info(tmp_path / "b" / "last.safetensors")
    assert info.hparams == read_info(start).hparams and info.hparams["n_feats"] == TINY["n_feats"]
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["arch"] == "drn" and config["model_overrides"] == info.hparams
    from vsr.train.trainer import Trainer

    trainer = Trainer(TrainConfig.load(tmp_path / "b" / "config.json"))  # as --resume builds it
    tensors, _ = load_tensors(start)
    assert all(torch.equal(v, tensors[k]) for k, v in trainer.primal.state_dict().items())
    wrong = CliRunner().invoke(cli, args[:-1] + ["--arch", "drn-t-x2", "--out",
                                                 str(tmp_path / "c")])
    assert isinstance(wrong.exception, ConfigError) and "leave out --arch" in str(wrong.exception)
    with pytest.raises(ConfigError, match="family"):
        Trainer(_config(images, tmp_path / "d", arch="drn", model_overrides={}))


def test_bad_config_is_refused(images: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        _config(images, tmp_path / "x", lr=-1)
    with pytest.raises(ConfigError, match="split"):
        train(_config(images, tmp_path / "x", batch_size=3), nproc=2)


def _torchrun_train(*args: str):
    """``vsr train ARGS`` as two torchrun ranks on this machine (CPU, gloo)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "vsr", "train",
         "--arch", "drn-t-x2", *args], capture_output=True, text=True, timeout=300)


def test_under_torchrun_a_bad_command_line_is_one_error_line(tmp_path: Path) -> None:
    """Every rank parses the same command line: each printed its own `Error:` line for it.
    Rank 0 says it; the others exit with the same code, silent."""
    run = _torchrun_train("--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"))
    assert run.returncode != 0
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "--data" in errors[0], run.stderr[-2000:]


def test_under_torchrun_only_rank_zero_reports(images: Path, tmp_path: Path) -> None:
    """Every torchrun rank runs the command; one summary line and one progress line, not two."""
    run = _torchrun_train("--data", str(images), "--out", str(tmp_path / "r"), "--iters", "4",
                          "--batch-size", "4", "--patch", "8", "--threads", "1")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("trained drn-t-x2 to step 4 of 4") == 1, run.stdout
    assert run.stderr.count("[4/4]") == 1, run.stderr
