"""Training across GPU slots: a time limit, a compact (sharded) state, exact continuation."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.test_train import _config
from vsr.errors import CheckpointError, ConfigError
from vsr.imageio import write_image
from vsr.models.checkpoint import load_tensors, read_info
from vsr.models.complexity import count_macs
from vsr.train import train
from vsr.train.state import read_training_state, state_paths
from vsr.train.trainer import STATE_STEM, Trainer, summary


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 36x36 images of smoothly upsampled noise (structure to learn, no downloads)."""
    folder = tmp_path_factory.mktemp("slots-hr")
    g = torch.Generator().manual_seed(11)
    for i in range(6):
        coarse = torch.rand(1, 3, 6, 6, generator=g)
        img = torch.nn.functional.interpolate(coarse, size=(36, 36), mode="bicubic")[0]
        write_image(folder / f"s{i}.png", (img.clamp(0, 1) * 255).round().to(torch.uint8))
    return folder


def _state(run: Path) -> dict[str, torch.Tensor]:
    return read_training_state(state_paths(run, STATE_STEM))[0]


def test_time_limit_stop_then_resume_gives_the_uninterrupted_weights(images: Path,
                                                                      tmp_path: Path) -> None:
    """The key property of training in slots: K steps in one go == a run stopped by its time
    limit part-way (state saved) and resumed to K, bit for bit (CPU, one thread)."""
    k = 10
    full = train(_config(images, tmp_path / "full", iterations=k))
    assert full.steps == k and not full.stopped

    def slow_down(rep) -> None:  # the budget runs out during step k/2: the run stops after it
        if rep.step == k // 2 - 1:
            time.sleep(1.6)

    cut = train(_config(images, tmp_path / "cut", iterations=k, time_limit=0.02),
                progress=slow_down)
    assert cut.stopped and 1 <= cut.steps < k
    info = read_info(tmp_path / "cut" / "train_state.safetensors")
    ts = info.provenance["training_state"]
    assert ts["step"] == cut.steps
    assert ts["schedule"] == {"kind": "cosine", "lr": 2e-3, "lr_min": 1e-4, "total": k}
    assert ts["rng"]["torch_cpu"] and ts["config"]["iterations"] == k
    assert (tmp_path / "cut" / "last.safetensors").exists()
    rest = train(_config(images, tmp_path / "cut", iterations=k), resume=True)
    assert rest.steps == k and not rest.stopped and min(rest.losses) == cut.steps + 1
    a, b = _state(tmp_path / "full"), _state(tmp_path / "cut")
    assert a.keys() == b.keys() and any(key.startswith("optim.") for key in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for step in range(cut.steps + 1, k + 1):
        assert rest.losses[step] == full.losses[step], step
    wa, _ = load_tensors(tmp_path / "full" / "last.safetensors")
    wb, _ = load_tensors(tmp_path / "cut" / "last.safetensors")
    assert all(torch.equal(wa[key], wb[key]) for key in wa)


def test_sharded_compact_state_resumes_and_refuses_mixed_saves(images: Path,
                                                               tmp_path: Path) -> None:
    big = dict(n_feats=32, n_blocks=[2])  # ~1.1 MB of fp32 weights: several 2 MiB shards
    cfg = _config(images, tmp_path / "s", iterations=4, model_overrides=big,
                  state_shard_mib=2, save_every=2)
    train(cfg)
    shards = state_paths(tmp_path / "s", STATE_STEM)
    assert [p.name for p in shards] == [f"train_state.{i:02d}.safetensors"
                                       for i in range(len(shards))] and len(shards) >= 2
    assert all(p.stat().st_size <= 2 * 2**20 for p in shards)
    assert not (tmp_path / "s" / "train_state.safetensors").exists()
    # the same run unsharded, and with its moments in bf16 or left out: sizes and contents
    sizes = {}
    for moments in ("fp32", "bf16", "none"):
        run = tmp_path / moments
        train(_config(images, run, iterations=4, model_overrides=big, state_moments=moments))
        sizes[moments] = (run / "train_state.safetensors").stat().st_size
        tensors = _state(run)
        moment = [v for k, v in tensors.items() if k.endswith("exp_avg")]
        assert (moment[0].dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[moments]
                if moment else moments == "none")
    assert sizes["none"] < 0.4 * sizes["fp32"] and sizes["bf16"] < 0.7 * sizes["fp32"]
    single = _state(tmp_path / "fp32")
    sharded = _state(tmp_path / "s")
    assert single.keys() == sharded.keys()
    assert all(torch.equal(single[k], sharded[k]) for k in single)
    # a moments-free state still resumes (Adam restarts), to the end of the plan
    more = train(_config(images, tmp_path / "none", iterations=6, model_overrides=big,
                         state_moments="none"), resume=True)
    assert more.steps == 6 and min(more.losses) == 5
    # a shard of another save is refused, not silently mixed in
    train(_config(images, tmp_path / "s2", iterations=2, model_overrides=big,
                  state_shard_mib=2))
    shutil.copy(state_paths(tmp_path / "s2", STATE_STEM)[-1], shards[-1])
    with pytest.raises(CheckpointError, match="different saves"):
        train(_config(images, tmp_path / "s", iterations=6, model_overrides=big,
                      state_shard_mib=2), resume=True)
    with pytest.raises(ConfigError, match="state_shard_mib"):
        _config(images, tmp_path / "x", state_shard_mib=1)
    # a shard whose entry is not what a save writes is a clean CheckpointError
    with safe_open(str(shards[0]), "pt") as f:
        meta = dict(f.metadata())
    meta = {k: ("{not json" if "shard" in k else v) for k, v in meta.items()}
    save_file(load_file(str(shards[0])), str(shards[0]), metadata=meta)
    with pytest.raises(CheckpointError, match="malformed shard entry"):
        read_training_state(state_paths(tmp_path / "s", STATE_STEM))


def test_shards_past_99_are_found_in_number_order(tmp_path: Path) -> None:
    for i in (0, 1, 99, 100, 101):
        (tmp_path / f"train_state.{i:02d}.safetensors").write_bytes(b"")
    (tmp_path / "train_state.x1.safetensors").write_bytes(b"")  # not a shard
    assert [p.name for p in state_paths(tmp_path, STATE_STEM)] == [
        f"train_state.{i:02d}.safetensors" for i in (0, 1, 99, 100, 101)]


def test_flops_and_utilisation_are_reported(images: Path, tmp_path: Path) -> None:
    result = train(_config(images, tmp_path / "f", iterations=3, peak_tflops=0.5))
    trainer = Trainer(_config(images, tmp_path / "g", iterations=1))
    macs = count_macs(trainer.primal, 8, 8) + count_macs(trainer.duals[0], 16, 16)
    assert result.flops_per_sample == 6 * macs
    s = summary(result)
    tflops = result.samples_per_s * 6 * macs / 1e12
    assert s["peak_tflops"] == 0.5 and s["mfu"] == round(tflops / 0.5, 4) and s["mfu"] > 0
    header = (tmp_path / "f" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "tflops" in header and "mfu" in header


def test_cli_resume_takes_runtime_options_and_a_fresh_time_limit(images: Path,
                                                                 tmp_path: Path) -> None:
    from vsr.cli.main import cli

    run = tmp_path / "c"
    args = ["train", "--arch", "drn-t-x2", "--data", str(images), "--out", str(run),
            "--iters", "6", "--batch-size", "2", "--patch", "8", "--threads", "1",
            "--log-every", "2", "--time-limit", "0.0001", "--json"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout.strip().splitlines()[-1])
    assert out["stopped_at_time_limit"] and out["steps"] == 1 and out["iterations"] == 6
    moved = tmp_path / "moved"  # as a committed state is copied to another machine's folder
    shutil.copytree(run, moved)
    again = CliRunner().invoke(cli, ["train", "--resume", str(moved), "--state-moments", "bf16",
                                     "--log-every", "1", "--json"])
    assert again.exit_code == 0, again.output
    out = json.loads(again.stdout.strip().splitlines()[-1])
    assert out["steps"] == 6 and not out["stopped_at_time_limit"]
    assert out["run_dir"] == str(moved)
    assert read_info(run / "last.safetensors").provenance["iterations"] == 1
    assert read_info(moved / "last.safetensors").provenance["iterations"] == 6
    saved = json.loads((moved / "config.json").read_text())
    assert saved["state_moments"] == "bf16" and saved["log_every"] == 1
    assert saved["time_limit"] is None and saved["iterations"] == 6
    bad = CliRunner().invoke(cli, args[:-3] + ["--time-limit", "0", "--out", str(tmp_path / "z")])
    assert bad.exit_code != 0


@pytest.mark.cuda
def test_cuda_steps_between_log_points_never_wait_for_the_gpu(images: Path,
                                                              tmp_path: Path) -> None:
    trainer = Trainer(_config(images, tmp_path / "g", iterations=8, device="cuda",
                              model_overrides={}))
    assert trainer.sampler.device.type == "cuda"
    trainer._step(0, None)  # warm-up: cudnn's benchmark and the allocator may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        terms = [trainer._step(s, None) for s in range(1, 6)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.stack(terms).isfinite().all()
