"""Robustness of `vsr train`, `vsr compress` and `vsr export` options: non-finite numbers are
refused up front, a diverging run stops without writing NaN weights, --json stays strict JSON,
compress results are not replaced without --overwrite, and export never replaces its model."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from vsr.cli.main import cli
from vsr.compress import CompressConfig
from vsr.errors import ConfigError, OutputError
from vsr.imageio import write_image
from vsr.models import DRN, CheckpointInfo, save_model
from vsr.train import TrainConfig, TrainingDiverged, TrainResult, train
from vsr.train.trainer import summary

torch.set_num_threads(1)
TINY = {"n_feats": 4, "n_blocks": [1]}
NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four smooth synthetic 32x32 images."""
    folder = tmp_path_factory.mktemp("hr")
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    for i in range(4):
        img = torch.stack([torch.sin((i + c + 2) * xx + (c + 1) * yy) for c in range(3)])
        write_image(folder / f"img{i}.png", ((img * 0.5 + 0.5) * 255).round().to(torch.uint8))
    return folder


@pytest.fixture(scope="module")
def tiny_drn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = DRN(scale=2, n_feats=8, n_blocks=[2])
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_model(path, net, CheckpointInfo(arch="drn", hparams=net.hparams, scale=2,
                                         name="tiny-x2", provenance={"tool": "test"}))
    return path


def _train_config(images: Path, out: Path, **kw) -> TrainConfig:
    base = dict(arch="drn-t-x2", data=(str(images),), out=str(out), iterations=4,
                batch_size=2, patch=8, lr=2e-3, lr_min=1e-4, log_every=2, save_every=1000,
                val_every=1000, threads=1, model_overrides=dict(TINY))
    base.update(kw)
    return TrainConfig(**base)


# ---- train: options

@pytest.mark.parametrize(("name", "value"), [
    *[(name, v) for name in ("lr", "dual_lambda", "adapt_weight", "consistency")
      for v in (NAN, INF)],
    ("lr_min", NAN), ("time_limit", INF), ("peak_tflops", INF), ("state_shard_mib", INF)])
def test_train_config_refuses_non_finite_floats(images: Path, tmp_path: Path, name: str,
                                                value: float) -> None:
    with pytest.raises(ConfigError, match=f"^{name} must be"):
        _train_config(images, tmp_path / "run", **{name: value})


@pytest.mark.parametrize("option", ["--dual-lambda", "--adapt-weight", "--lr", "--lr-min"])
def test_train_cli_refuses_nan_before_training(images: Path, tmp_path: Path,
                                               option: str) -> None:
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", "--arch", "drn-t-x2", "--iterations", "2",
                                   "--batch-size", "2", "--patch", "8", "--threads", "1",
                                   "--device", "cpu", "--data", str(images), "--out", str(out),
                                   option, "nan", "--json"])
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError), res.output
    assert option[2:].replace("-", "_") in str(res.exception)
    assert not out.exists() and res.stdout == ""


# ---- train: divergence and strict JSON

@pytest.mark.parametrize("log_every", [1, 100])  # seen in the logged losses / at a save
def test_diverging_run_stops_naming_the_step_and_writes_no_nan_weights(
        images: Path, tmp_path: Path, log_every: int) -> None:
    out = tmp_path / "run"
    cfg = _train_config(images, out, iterations=6, lr=1e30, lr_min=1e30, save_every=1,
                        log_every=log_every)
    with pytest.raises(TrainingDiverged, match=r"at step 2 of 6: the loss became nan.*"
                                               r"keeps the state of step 1"):
        train(cfg)
    for name in ("last.safetensors", "best.safetensors", "model-fp16.safetensors"):
        assert not (out / name).exists(), name
    state = load_file(str(out / "train_state.safetensors"))  # step 1's: the last finite one
    assert all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def test_a_diverging_ddp_run_is_the_same_error(images: Path, tmp_path: Path) -> None:
    """Ranks spawned by --nproc raise in their own processes: the parent raises the rank's
    own error (one line in the CLI), not mp.spawn's report of a traceback."""
    cfg = _train_config(images, tmp_path / "ddp", iterations=4, lr=1e30, lr_min=1e30,
                        save_every=1, log_every=1, batch_size=4)
    with pytest.raises(TrainingDiverged, match=r"at step 2 of 4: the loss became nan"):
        train(cfg, nproc=2)
    assert not list((tmp_path / "ddp").glob("*.error*"))


def test_train_summary_is_strict_json_with_non_finite_numbers(tmp_path: Path) -> None:
    result = TrainResult(tmp_path, 3, losses={3: NAN}, best_psnr=INF, iterations=3)
    s = summary(result)
    assert s["final_loss"] is None and s["best_val_psnr"] is None
    json.dumps(s, allow_nan=False)  # raises on NaN / Infinity


# ---- compress

def _compress(tiny_drn: Path, images: Path, out: Path, *extra: str):
    args = ["compress", "--checkpoint", str(tiny_drn), "--data", str(images), "--out",
            str(out), "--method", "l1", "--batch-size", "2", "--patch", "8",
            "--finetune-steps", "1", "--dual-warmup", "1", "--prune-batches", "1",
            "--prune-batch-size", "2", "--threads", "1", "--json", *extra]
    return CliRunner().invoke(cli, args)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.mark.parametrize("kw", [dict(finetune_lr=NAN), dict(alpha_lr=INF), dict(search_lr=NAN),
                                dict(prune_lr=NAN), dict(distill=NAN), dict(dual_lambda=INF)])
def test_compress_config_refuses_non_finite_floats(tmp_path: Path, kw: dict) -> None:
    base = dict(checkpoint="x.safetensors", ratio=0.5, data=("d",), out=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match=f"{next(iter(kw))} must be"):
        CompressConfig(**{**base, **kw})


def test_compress_rerun_needs_overwrite(tiny_drn: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    first = _compress(tiny_drn, images, out, "-r", "0.5")
    assert first.exit_code == 0, first.output
    before = _digests(out)
    again = _compress(tiny_drn, images, out, "-r", "0.25")
    assert again.exit_code != 0 and isinstance(again.exception, OutputError), again.output
    assert "--overwrite" in str(again.exception) and _digests(out) == before
    # a single stage replaces its own file too
    stage = _compress(tiny_drn, images, out, "-r", "0.5", "--stage", "finetune")
    assert isinstance(stage.exception, OutputError) and _digests(out) == before
    replaced = _compress(tiny_drn, images, out, "-r", "0.25", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / "search.json").read_text())["ratio"] == 0.25
    assert _digests(out)["compressed.safetensors"] != before["compressed.safetensors"]
    # a new search alone leaves no pruned/compressed file of the old widths behind
    search = _compress(tiny_drn, images, out, "-r", "0.5", "--stage", "search", "--overwrite")
    assert search.exit_code == 0, search.output
    assert sorted(p.name for p in out.iterdir()) == ["search.json", "summary.json"]
    assert "finetune" not in json.loads((out / "summary.json").read_text())


def test_failed_compress_leaves_no_folder(tiny_drn: Path, images: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_text("not a checkpoint")
    res = _compress(bad, images, tmp_path / "a" / "b", "-r", "0.5")
    assert res.exit_code != 0 and not (tmp_path / "a").exists(), res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _compress(tiny_drn, empty, tmp_path / "c", "-r", "0.5")
    assert res.exit_code != 0 and not (tmp_path / "c").exists(), res.output


def test_diverging_finetune_writes_no_compressed_file(tiny_drn: Path, images: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    res = _compress(tiny_drn, images, out, "-r", "0.5", "--finetune-steps", "3",
                    "--lr", "1e30")
    assert isinstance(res.exception, TrainingDiverged), res.output
    assert "fine-tuning diverged at step" in str(res.exception)
    assert not (out / "compressed.safetensors").exists()


# ---- export

@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_export_never_replaces_its_model(drn_checkpoint: Path, tmp_path: Path,
                                         how: str) -> None:
    model = tmp_path / "mine.safetensors"
    model.write_bytes(drn_checkpoint.read_bytes())
    # a link named as a TorchScript file; the model's own name is no export's (refused too)
    output = {"same": model, "symlink": tmp_path / "link.pt",
              "hardlink": tmp_path / "hard.pt"}[how]
    if how == "symlink":
        output.symlink_to(model.name)
    elif how == "hardlink":
        os.link(model, output)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    res = CliRunner().invoke(cli, ["export", "-m", str(model), "--format", "torchscript",
                                   "-o", str(output), "--overwrite", "--height", "16",
                                   "--width", "16", "--device", "cpu"])
    if how == "same":
        assert isinstance(res.exception, ConfigError), res.output
        assert "not mine.safetensors" in str(res.exception)
    else:
        assert isinstance(res.exception, OutputError), res.output
        assert "would replace the input" in str(res.exception)
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest
