"""vsr train --degrade: the primal sees degraded LR made on a worker thread; targets stay clean."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import pytest
import torch

from tests.test_train import _config
from tests.test_train_slots import images  # noqa: F401  (module fixture: synthetic HR images)
from vsr.degradations import DegradationChain
from vsr.errors import ConfigError
from vsr.models.checkpoint import read_info
from vsr.train import train
from vsr.train.data import PatchSampler, lr_pyramid, step_generator
from vsr.train.prefetch import DegradedBatches
from vsr.train.trainer import Trainer


def _degraded(data: Path, out: Path, iterations: int, spec: str):
    """A trainer on ``spec`` and its degraded-batch feed from step 0 (close it after use)."""
    trainer = Trainer(_config(data, out, iterations=iterations, degrade=spec))
    batches = trainer._degraded_batches(0)
    batches.start()
    return trainer, batches


def test_degraded_input_clean_targets_and_reproducible_batches(images: Path,  # noqa: F811
                                                               tmp_path: Path) -> None:
    trainer, batches = _degraded(images, tmp_path / "d", 4,
                                 "blur:sigma=0.5~1.5,bicubic,noise:sigma=6")
    try:
        b = trainer._batch(0, batches)
        pyramid, lr_in = b.pyramid, b.lr_in
        assert b.lr_prev is None and b.shifts is None  # no --consistency: no second frames
        again = batches.make(0)  # a pure function of (seed, step): made again, the same
        hr = trainer.sampler.crops(4, step_generator(3, 0))
        assert torch.equal(again.hr, hr)
        assert torch.equal(again.lr.float() / 255.0, lr_in)
        clean = lr_pyramid(hr.float() / 255.0, 2)[0]
        assert torch.equal(pyramid[0], clean)  # the primal's LR target and the duals': clean
        assert (lr_in - clean).abs().mean() > 0.01  # the input is not
        assert torch.equal(pyramid[1], hr.float() / 255.0)
        # the step after comes from the queue in order
        nxt = trainer._batch(1, batches).lr_in
        assert torch.equal(nxt, batches.make(1).lr.float() / 255.0)
    finally:
        batches.close()
    primal_clean = trainer.net(pyramid, None)[0]
    primal_degraded = trainer.net(pyramid, None, lr_in)[0]
    assert not torch.equal(primal_clean, primal_degraded)


def test_other_downscale_gives_its_own_clean_target(images: Path,  # noqa: F811
                                                    tmp_path: Path) -> None:
    trainer, batches = _degraded(images, tmp_path / "a", 2, "area,noise:sigma=4")
    try:
        pyramid = trainer._batch(0, batches).pyramid
        hr = batches.make(0).hr
    finally:
        batches.close()
    area = DegradationChain.parse("area").apply_images(hr, 2)
    assert torch.equal(pyramid[0], area.float() / 255.0)
    assert not torch.equal(pyramid[0], lr_pyramid(hr.float() / 255.0, 2)[0])


def test_training_through_a_real_codec_records_the_chain(images: Path,  # noqa: F811
                                                         tmp_path: Path) -> None:
    spec = "bicubic,x264:crf=24~34"
    result = train(_config(images, tmp_path / "x", iterations=3, log_every=1, degrade=spec,
                           degrade_workers=2))
    assert result.steps == 3 and all(torch.isfinite(torch.tensor(v))
                                     for v in result.losses.values())
    prov = read_info(tmp_path / "x" / "last.safetensors").provenance
    assert prov["degrade"] == str(DegradationChain.parse(spec))
    with pytest.raises(ConfigError):
        _config(images, tmp_path / "y", degrade="x264:crf=30")  # no downscale stage


def test_one_pool_of_threads_codes_every_batch(images: Path) -> None:  # noqa: F811
    """The crops of all batches are coded on one pool owned by the feed: the threads started
    while making 12 batches are the producer and the 2 workers (one pool per batch started
    24), and close() ends them all."""
    chain = DegradationChain.parse("bicubic,jpeg:q=20~60")
    before = threading.active_count()
    started: set[str] = set()

    def on_start(*_: object) -> None:  # threading.settrace: runs once in each new thread
        started.add(threading.current_thread().name)

    previous = threading.gettrace()
    threading.settrace(on_start)
    try:
        batches = DegradedBatches(PatchSampler([str(images)], 16), chain, 2, seed=5, batch=4,
                                  rows=slice(0, 4), stream=2, first=0, last=12, workers=2)
        assert threading.active_count() == before  # nothing runs before start(), inside a try
        try:
            batches.start()
            got = [batches.get(step) for step in range(12)]
            assert threading.active_count() <= before + 3
        finally:
            batches.close()
    finally:
        threading.settrace(previous)
    assert len(started) <= 3, sorted(started)
    assert threading.active_count() == before
    # the same batches as coded serially, each a function of (seed, step, stream)
    for item in got[:3]:
        gen = step_generator(5, item.step, 2)
        assert torch.equal(item.lr, chain.apply_images(item.hr, 2, generator=gen, workers=1))


def test_closing_the_feed_early_stops_its_threads(images: Path) -> None:  # noqa: F811
    """A run stopped by a signal closes the feed with hundreds of steps left (and maybe before
    it started): close() returns with no thread of the feed left behind."""
    before = threading.active_count()
    chain = DegradationChain.parse("bicubic,jpeg:q=20~60")

    def feed() -> DegradedBatches:
        return DegradedBatches(PatchSampler([str(images)], 16), chain, 2, seed=5, batch=4,
                               rows=slice(0, 4), stream=2, first=0, last=1000, workers=2)

    never = feed()
    with pytest.raises(RuntimeError, match="start"):
        never.get(0)  # not started: an error, not a wait for ever
    never.close()
    early = feed()
    try:
        early.start()
        assert early.get(0).step == 0
    finally:
        early.close()
    early.close()  # idempotent
    assert threading.active_count() == before


def test_consistency_loss_is_zero_exactly_when_aligned_outputs_agree() -> None:
    from vsr.train.losses import consistency_loss

    g = torch.Generator().manual_seed(0)
    out = torch.rand(3, 3, 40, 40, generator=g)
    shifts = torch.tensor([[1, -2], [0, 0], [-1, 2]])
    padded = torch.nn.functional.pad(out, (8, 8, 8, 8), mode="replicate")
    # prev[Y + dy*s, X + dx*s] = out[Y, X] for s = 2
    prev = torch.stack([padded[i, :, 8 - 2 * dy:48 - 2 * dy, 8 - 2 * dx:48 - 2 * dx]
                        for i, (dy, dx) in enumerate(shifts.tolist())])
    assert consistency_loss(out, prev, shifts, 2, 4).item() == 0.0
    assert consistency_loss(out, prev, -shifts, 2, 4).item() > 0.01
    with pytest.raises(ValueError):
        consistency_loss(out, prev, shifts, 2, 10)  # nothing left inside the margin


def test_consistency_training_sees_two_codings_of_each_crop(images: Path,  # noqa: F811
                                                            tmp_path: Path) -> None:
    spec = "bicubic,x264:crf=36"
    trainer = Trainer(_config(images, tmp_path / "c", iterations=2, patch=16, degrade=spec,
                              consistency=1.0))
    batches = trainer._degraded_batches(0)
    try:
        batches.start()
        b = trainer._batch(0, batches)
    finally:
        batches.close()
    assert b.lr_prev.shape == b.lr_in.shape and b.shifts.shape == (4, 2)
    from vsr.models.complexity import count_macs

    macs = 2 * count_macs(trainer.primal, 16, 16) + count_macs(trainer.duals[0], 32, 32)
    assert trainer.flops_per_sample == 6 * macs  # two primal passes per sample
    terms = trainer.net(b.pyramid, None, b.lr_in, b.lr_prev, b.shifts)
    assert terms[3].item() > 0  # two codings of a crop: the outputs differ
    same = trainer.net(b.pyramid, None, b.lr_in, b.lr_in, torch.zeros_like(b.shifts))
    assert same[3].item() == 0.0
    assert torch.allclose(same[0], terms[0])  # the primal term scores the first frame only
    from click.testing import CliRunner

    from vsr.cli.main import cli

    run = tmp_path / "r"
    got = CliRunner().invoke(cli, ["train", "--arch", "drn-t-x2", "--data", str(images),
                                   "--out", str(run), "--iters", "3", "--batch-size", "4",
                                   "--patch", "16", "--threads", "1", "--log-every", "1",
                                   "--degrade", spec, "--consistency", "0.5",
                                   "--degrade-workers", "2", "--json"])
    assert got.exit_code == 0, got.output
    with (run / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    for r in rows:  # the weighted term is in the loss that was minimised
        lc = float(r["consistency"])
        expected = float(r["primal"]) + 0.1 * float(r["dual"]) + 0.5 * lc
        assert lc > 0 and float(r["loss"]) == pytest.approx(expected, rel=1e-4)
    assert read_info(run / "last.safetensors").provenance["consistency"] == 0.5
    with pytest.raises(ConfigError, match="video codec"):
        _config(images, tmp_path / "n", degrade="bicubic,jpeg:q=20", consistency=1.0)
    with pytest.raises(ConfigError, match="video codec"):
        _config(images, tmp_path / "n", consistency=1.0)
    with pytest.raises(ConfigError, match="patch over 8"):
        _config(images, tmp_path / "n", degrade=spec, consistency=1.0)  # patch 8: nothing left
