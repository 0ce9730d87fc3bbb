"""Training across GPU slots: a time limit, a compact (sharded) state, exact continuation."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from tests.test_train import _config
from vsr.errors import CheckpointError, ConfigError
from vsr.imageio import write_image
from vsr.models.checkpoint import CheckpointInfo, load_tensors, read_info
from vsr.models.complexity import count_macs
from vsr.train import train
from vsr.train.state import (
    read_training_state,
    remove_stale_state,
    save_training_state,
    state_paths,
)
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


def test_a_stop_request_saves_the_state_and_resume_gives_the_uninterrupted_weights(
        images: Path, tmp_path: Path) -> None:
    """Setting the stop event (what Ctrl-C, SIGTERM and SIGHUP do in `vsr train`) ends the run
    after the current step with its state saved; resumed, it ends where one run would."""
    import threading

    k = 8
    full = train(_config(images, tmp_path / "full", iterations=k))
    stop = threading.Event()

    def ask_at_3(rep) -> None:
        if rep.step == 3:
            stop.set()

    cut = train(_config(images, tmp_path / "cut", iterations=k), progress=ask_at_3, stop=stop)
    assert cut.interrupted and not cut.stopped and cut.steps == 4
    assert summary(cut)["interrupted"] and not summary(full)["interrupted"]
    assert read_info(tmp_path / "cut" / "train_state.safetensors").provenance[
        "training_state"]["step"] == 4
    rest = train(_config(images, tmp_path / "cut", iterations=k), resume=True)
    assert rest.steps == k and not rest.interrupted
    for step in range(5, k + 1):
        assert rest.losses[step] == full.losses[step], step
    wa, _ = load_tensors(tmp_path / "full" / "last.safetensors")
    wb, _ = load_tensors(tmp_path / "cut" / "last.safetensors")
    assert all(torch.equal(wa[key], wb[key]) for key in wa)


# SIGINT takes the same stop path: in the slow suite, to keep the fast one under 15 minutes
@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT,
                                                              marks=pytest.mark.slow)])
def test_vsr_train_stopped_by_a_signal_saves_its_state(images: Path, tmp_path: Path,
                                                       sig: signal.Signals) -> None:
    """A real process and a real signal: `vsr train` stops after its current step, saves a
    state at that step, exits 128 + the signal with one Error line saying how to go on."""
    run = tmp_path / "sig"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vsr", "train", "--arch", "drn-t-x2", "--data", str(images),
         "--out", str(run), "--iters", "100000", "--batch-size", "2", "--patch", "8",
         "--threads", "1", "--log-every", "1", "--save-every", "100000", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    metrics = run / "metrics.csv"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and (
            not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith("Error: stopped at step "), err
    assert f"vsr train --resume {run}" in lines[-1]
    assert (signal.Signals(sig).name in lines[-1]) == (sig != signal.SIGINT)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["interrupted"] and 2 <= report["steps"] < 100000
    info = read_info(run / "train_state.safetensors")
    assert info.provenance["training_state"]["step"] == report["steps"]
    assert read_info(run / "last.safetensors").provenance["iterations"] == report["steps"]
    again = subprocess.run([sys.executable, "-m", "vsr", "train", "--resume", str(run),
                            "--time-limit", "0.0001", "--json"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["steps"] == report["steps"] + 1


def test_sharded_compact_state_resumes_and_refuses_mixed_saves(images: Path,
                                                               tmp_path: Path) -> None:
    big = dict(n_feats=32, n_blocks=[2])  # ~1.1 MB of fp32 weights: several 2 MiB shards
    cfg = _config(images, tmp_path / "s", iterations=4, model_overrides=big,
                  state_shard_mib=2, save_every=2)
    train(cfg)
    shards = state_paths(tmp_path / "s", STATE_STEM)
    save_id = shards[0].name.split(".")[1]
    assert [p.name for p in shards] == [f"train_state.{save_id}.{i:02d}.safetensors"
                                       for i in range(len(shards))] and len(shards) >= 2
    # the index names them; the shards of the save at step 2 are gone
    assert sorted(p.name for p in (tmp_path / "s").glob("train_state*")) == sorted(
        [p.name for p in shards] + ["train_state.index.json"])
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
    # a resume removes what an interrupted save left (here: a partial shard and a temporary
    # file) before it trains, and nothing else
    partial = [tmp_path / "none" / "train_state.0123456789abcdef.00.safetensors",
               tmp_path / "none" / ".train_state.safetensors.x1y2.tmp",  # an older version's
               tmp_path / "none" / ".train_state.4242.0a1b89abcdef.partial.safetensors",
               tmp_path / "none" / ".train_state.0123456789abcdef.01.4242.0a1b89abcdef"
                                   ".partial.safetensors",
               tmp_path / "none" / ".train_state.index.4242.0a1b89abcdef.partial.json"]
    for path in partial:
        path.write_bytes(b"partial")
    Trainer(_config(images, tmp_path / "none", iterations=6, model_overrides=big,
                    state_moments="none"), resume=True)
    assert not any(p.exists() for p in partial)
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


_NO_PYAV = """
import runpy, sys
class NoPyAV:  # the GPU training machine's Python: torch, but no PyAV and no decord
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("av", "decord"):
            raise ImportError(f"no module named {name!r} on this machine")
sys.meta_path.insert(0, NoPyAV())
sys.argv = ["vsr", *sys.argv[1:]]
runpy.run_module("vsr", run_name="__main__")
"""


def test_training_from_an_image_pack_needs_no_pyav(images: Path, tmp_path: Path) -> None:
    """The GPU slot's machine has no PyAV (benchmarks/gpu_train_slot.sh): `vsr train` on a
    carried pack, its resume and the slot's evaluation run without it (training's state
    files once imported PyAV through `vsr.io`, and every slot would have failed at once)."""
    from vsr.imageio import read_image
    from vsr.train.data import save_image_pack

    pack = save_image_pack(tmp_path / "train.npz", {
        f.stem: read_image(f) for f in sorted(images.glob("*.png"))})
    run = tmp_path / "run"
    cmd = [sys.executable, "-c", _NO_PYAV]
    first = subprocess.run(
        [*cmd, "train", "--arch", "drn-t-x2", "--data", str(pack), "--out", str(run),
         "--iters", "1000", "--batch-size", "2", "--patch", "8", "--threads", "1",
         "--time-limit", "0.0001", "--json"], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    again = subprocess.run([*cmd, "train", "--resume", str(run), "--time-limit", "0.0001",
                            "--json"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["steps"] == 2
    evaluation = subprocess.run(  # as benchmarks/train_slot.py eval scores a pack
        [sys.executable, "-c", _NO_PYAV.replace(
            'runpy.run_module("vsr", run_name="__main__")',
            "from vsr.evaluate import evaluate_image\n"
            "from vsr.loading import load_model\n"
            "from vsr.train.data import load_image_pack\n"
            "handle = load_model(sys.argv[1], device='cpu')\n"
            "for hr in load_image_pack(sys.argv[2]).values():\n"
            "    print(evaluate_image(handle, hr, handle.scale))"),
         str(run / "last.safetensors"), str(pack)],
        capture_output=True, text=True, timeout=120)
    assert evaluation.returncode == 0, evaluation.stderr
    assert len(evaluation.stdout.splitlines()) == 6


def save_small_state(run: Path, seed: int, step: int, shard_bytes: int | None,
                     hook: Callable[[str, Path], None] | None = None) -> list[Path]:
    """A training state of two small Adam-trained networks (about 2.4 MB with its moments):
    with ``shard_bytes`` of 1.3 MB, one 256x256 weight (and its moments) per shard."""
    torch.manual_seed(seed)
    primal = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    duals = nn.Sequential(nn.Linear(256, 256))
    opts = {"primal": torch.optim.Adam(primal.parameters()),
            "dual": torch.optim.Adam(duals.parameters())}
    x = torch.randn(4, 256)
    (primal(x).square().mean() + duals(x).square().mean()).backward()
    for opt in opts.values():
        opt.step()
    info = CheckpointInfo(arch="test", hparams={}, scale=2, name="test")
    return save_training_state(run, STATE_STEM, primal, duals, opts, step, info, {"seed": seed},
                               shard_bytes=shard_bytes, hook=hook)


_SHARD = 2**20 + 300_000
_CHILD = """
import os, sys
from pathlib import Path
from tests.test_train_slots import save_small_state

run, shard, event, number = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]

def hook(what, path):  # at the chosen point: tell the parent, then wait to be killed
    if what == event and (number == "any" or path.name.endswith(f".{number}.safetensors")):
        os.write(1, b"K")
        sys.stdin.read()

save_small_state(run, 2, 20, shard or None, hook)
os.write(1, b"finished")
"""


def _layout(run: Path, layout: str) -> None:
    """The state of seed 1, step 10, as a single file, shards with an index, or shards with
    the plain numbered names versions before the index wrote (the same files, renamed)."""
    paths = save_small_state(run, 1, 10, None if layout == "single" else _SHARD)
    if layout == "legacy":
        for i, path in enumerate(paths):
            path.rename(run / f"{STATE_STEM}.{i:02d}.safetensors")
        (run / "train_state.index.json").unlink()


def _loaded(run: Path) -> tuple[dict[str, torch.Tensor], int]:
    tensors, info = read_training_state(state_paths(run, STATE_STEM))
    return tensors, info.provenance["training_state"]["step"]


_SLOW = pytest.mark.slow  # 5-10 s each on a loaded 2-core machine (a fresh python + torch)


@pytest.mark.parametrize(("old", "new", "event", "number", "survivor"), [
    pytest.param("sharded", "sharded", "written", "00", "old", marks=_SLOW),  # first new shard
    ("sharded", "sharded", "written", "04", "old"),
    pytest.param("sharded", "sharded", "written", "08", "old", marks=_SLOW),  # all, not current
    ("sharded", "sharded", "current", "any", "new"),  # switched, old files not yet removed
    pytest.param("single", "sharded", "written", "05", "old", marks=_SLOW),
    ("legacy", "sharded", "written", "08", "old"),
    ("sharded", "single", "written", "any", "old"),  # the file is written, the index not gone
    pytest.param("legacy", "single", "current", "any", "new", marks=_SLOW),
])
def test_a_save_killed_at_any_point_leaves_one_complete_state(tmp_path: Path, old: str,
                                                              new: str, event: str,
                                                              number: str,
                                                              survivor: str) -> None:
    """A real process saving a state is SIGKILLed at a fixed point of the save (its hook
    blocks there on a pipe): the folder then holds the complete old state or the complete new
    one, bit for bit, and the next resume or save removes what the killed save left."""
    run, ref = tmp_path / "run", tmp_path / "ref"
    _layout(run, old)
    before, _ = _loaded(run)
    save_small_state(ref, 2, 20, _SHARD if new == "sharded" else None)
    after, _ = _loaded(ref)
    assert len(state_paths(ref, STATE_STEM)) == (9 if new == "sharded" else 1)
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(run), str(_SHARD if new == "sharded" else 0), event,
         number], cwd=Path(__file__).parent.parent, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        signal_byte = os.read(proc.stdout.fileno(), 1) if ready else b""
        os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert signal_byte == b"K", err.decode()[-2000:]
    assert proc.returncode == -signal.SIGKILL
    tensors, step = _loaded(run)
    want, want_step = (before, 10) if survivor == "old" else (after, 20)
    assert step == want_step and tensors.keys() == want.keys()
    assert all(torch.equal(tensors[k], want[k]) and tensors[k].dtype == want[k].dtype
               for k in want)
    current = set(state_paths(run, STATE_STEM))
    left = {p for p in run.iterdir() if p not in current and p.name != "train_state.index.json"}
    assert left, "the killed save left nothing: it was not interrupted mid-save"
    # a resume removes the leftovers and only them: the state still loads the same
    removed = remove_stale_state(run, STATE_STEM)
    assert set(removed) == left and _loaded(run)[1] == want_step
    # and a complete save afterwards leaves exactly its own files
    paths = save_small_state(run, 3, 30, _SHARD)
    assert {p.name for p in run.iterdir()} == {p.name for p in paths} | {"train_state.index.json"}
    assert _loaded(run)[1] == 30
