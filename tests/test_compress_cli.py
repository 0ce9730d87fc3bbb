"""`vsr compress` end to end on a tiny DRN and synthetic images: stages, reruns, reload alone."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest
import torch
from click.testing import CliRunner
from conftest import make_clip

from vsr.cli.main import cli
from vsr.compress import layer_widths
from vsr.imageio import write_image
from vsr.models import DRN, CheckpointInfo, DualNetworks, load_model, load_network, save_model
from vsr.models.checkpoint import read_info

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compress")
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    for folder, n in (("hr", 6), ("val", 2)):
        (root / folder).mkdir()
        for i in range(n):
            f = torch.rand(3, 3, generator=g) * 6 + 1
            img = torch.stack([torch.sin(f[c, 0] * xx + f[c, 1] * yy + f[c, 2])
                               for c in range(3)])
            write_image(root / folder / f"img{i}.png",
                        ((img * 0.5 + 0.5) * 255).round().to(torch.uint8))
    torch.manual_seed(0)
    net = DRN(scale=2, n_feats=8, n_blocks=[2])
    duals = DualNetworks(phase=1, width=8)
    info = CheckpointInfo(arch="drn", hparams=net.hparams, scale=2, name="tiny-x2",
                          provenance={"tool": "test"})
    save_model(root / "tiny.safetensors", net, info)
    save_model(root / "state.safetensors", net, info,
               extra={f"dual.{k}": v for k, v in duals.state_dict().items()})
    return {"root": root, "ckpt": root / "tiny.safetensors", "state": root / "state.safetensors"}


def _args(s: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["compress", "--checkpoint", str(s["ckpt"]), "--ratio", "0.5",
            "--data", str(s["root"] / "hr"), "--out", str(out), "--val-data",
            str(s["root"] / "val"), "--batch-size", "2", "--patch", "8",
            "--search-steps", "2", "--search-val-every", "1", "--prune-batches", "1",
            "--prune-batch-size", "2", "--finetune-steps", "3", "--val-every", "2",
            "--threads", "1", "--json", *extra]


def _run(args: list[str]) -> dict:
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_all_stages_then_the_result_reloads_alone(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "drc"
    summary = _run(_args(setup, out, "--duals", str(setup["state"]), "--lr", "5e-4"))
    assert summary["stages"] == ["search", "prune", "finetune"]
    search = json.loads((out / "search.json").read_text())
    widths = search["widths"]
    assert all(w in c for w, c in zip(widths, search["candidates"], strict=True))
    assert search["val_psnr"] is not None and len(search["history"]) == 2
    # the compressed checkpoint is an ordinary one: loads alone, right widths, provenance
    handle = load_model(out / "compressed.safetensors")
    assert layer_widths(handle.module) == widths
    assert handle.scale == 2
    info = read_info(out / "compressed.safetensors")
    assert info.provenance["base"] == "tiny-x2" and info.provenance["ratio"] == 0.5
    assert info.provenance["method"] == "drc" and info.provenance["widths"] == widths
    assert info.provenance["prune_refit"] == "lstsq" and info.provenance["prune_batches"] == 1
    assert info.provenance["finetune_lr"] == 5e-4 and info.provenance["batch_size"] == 2
    assert info.provenance["patch"] == 8 and info.provenance["finetune_steps"] == 3
    y = handle.upscale(torch.zeros(1, 3, 10, 12, dtype=torch.uint8))
    assert y.shape == (1, 3, 20, 24) and y.dtype == torch.uint8
    model, _ = load_network(out / "compressed.safetensors")
    assert summary["finetune"]["params"] == sum(p.numel() for p in model.parameters())
    assert summary["finetune"]["macs_96"] < summary["original"]["macs_96"]
    # the pruned stage file also reloads alone (its dual tensors are ignored)
    assert layer_widths(load_model(out / "pruned.safetensors").module) == widths
    # `vsr eval`, `vsr export` and `vsr upscale` take the compressed file alone
    ck = str(out / "compressed.safetensors")
    ev = _run(["eval", "--model", ck, "--data", str(setup["root"] / "val"), "--device", "cpu",
               "--json"])
    assert ev["results"][0]["images"] == 2
    res = CliRunner().invoke(cli, ["export", "--format", "torchscript", "--model", ck, "-o",
                                   str(tmp_path / "m.pt"), "--height", "16", "--width", "16",
                                   "--device", "cpu"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m.pt").stat().st_size > 0
    clip = make_clip(tmp_path / "in.mp4", frames=3, size=(32, 24))
    res = CliRunner().invoke(cli, ["upscale", str(clip), str(tmp_path / "up.mkv"), "--model", ck,
                                   "--device", "cpu"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    with av.open(str(tmp_path / "up.mkv")) as f:
        v = f.streams.video[0]
        assert (v.width, v.height) == (64, 48) and sum(1 for _ in f.decode(v)) == 3
    # a stage reruns alone from the previous stage's file (replacing its own: --overwrite)
    before = (out / "compressed.safetensors").stat().st_mtime_ns
    again = _run(_args(setup, out, "--stage", "finetune", "--overwrite"))
    assert again["stages"] == ["finetune"]
    assert (out / "compressed.safetensors").stat().st_mtime_ns != before


def test_l1_baseline_at_given_widths_and_stage_errors(setup: dict[str, Path],
                                                      tmp_path: Path) -> None:
    # without --duals the dual models are fitted first; l1 at explicit (uniform) widths
    out = tmp_path / "l1"
    summary = _run(_args(setup, out, "--method", "l1", "--dual-warmup", "3"))
    widths = json.loads((out / "search.json").read_text())["widths"]
    assert widths == [4, 8, 8, 8]  # round4(c * 0.5): c = 8, 16, 16, 16
    assert layer_widths(load_model(out / "compressed.safetensors").module) == widths
    assert summary["prune"]["macs_96"] == summary["finetune"]["macs_96"]
    # a missing previous stage is a one-line error, exit code 1
    res = CliRunner().invoke(cli, _args(setup, tmp_path / "empty", "--stage", "prune"))
    assert res.exit_code != 0 and "run --stage search first" in str(res.exception)
    # a stage file made with another method is refused
    res = CliRunner().invoke(cli, _args(setup, out, "--stage", "prune", "--method", "drc"))
    assert res.exit_code != 0 and "method l1" in str(res.exception)
    # an unknown refit rule is refused by the config too (the CLI's choice list is the same)
    from vsr.compress import CompressConfig
    from vsr.errors import ConfigError

    with pytest.raises(ConfigError, match="refit"):
        CompressConfig(checkpoint=str(setup["ckpt"]), ratio=0.5, data=(str(setup["root"]),),
                       out=str(tmp_path / "x"), prune_refit="adam")


def test_report_rows_and_plot(setup: dict[str, Path], tmp_path: Path) -> None:
    from vsr.compress.layers import candidate_widths, prunable_layers
    from vsr.compress.prune import l1_prune
    from vsr.compress.report import build_report, write_report

    net, info = load_network(setup["ckpt"])
    slim, _ = l1_prune(net, [candidate_widths(la.width, 0.5)[-1] for la in prunable_layers(net)])
    save_model(tmp_path / "slim.safetensors", slim, CheckpointInfo(
        arch="drn", hparams=slim.hparams, scale=2, name="slim"))
    report = build_report({"original": setup["ckpt"], "l1": tmp_path / "slim.safetensors"},
                          [setup["root"] / "val"], repeats=1, latency_hw=(64, 96))
    rows = report["models"]
    assert rows["original"]["macs_drop"] == 0.0 and 0.3 < rows["l1"]["macs_drop"] < 0.6
    assert rows["l1"]["params"] < rows["original"]["params"]
    assert rows["l1"]["latency_s"] > 0 and rows["l1"]["latency_cpu_s"] > 0
    assert "psnr" in rows["l1"]["val"]
    js, png = write_report(report, tmp_path / "rep")
    assert json.loads(js.read_text())["reference"] == "original"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sharded_training_state_and_an_image_pack_compress_as_their_files(
        setup: dict[str, Path], tmp_path: Path) -> None:
    """What a GPU slot leaves (a state in shards, named by its index) and what it carries (an
    image pack, readable without PyAV) give the network a one-file state and the folder give."""
    from vsr.imageio import read_image
    from vsr.models.checkpoint import load_tensors
    from vsr.train.data import save_image_pack
    from vsr.train.state import save_training_state

    net, info = load_network(setup["ckpt"])
    torch.manual_seed(1)
    duals = DualNetworks(phase=1, width=10_000)  # 1.08 MB a tensor: one shard each
    opts = {"primal": torch.optim.Adam(net.parameters()),
            "dual": torch.optim.Adam(duals.parameters())}
    one = save_training_state(tmp_path / "one", "train_state", net, duals, opts, 1, info, {},
                              moments="none")
    shards = save_training_state(tmp_path / "run", "train_state", net, duals, opts, 1, info, {},
                                 moments="none", shard_bytes=2**20 + 1_200_000)
    dual_files = {f for f in shards if any(k.startswith("dual.") for k in load_tensors(f)[0])}
    assert len(one) == 1 and len(dual_files) > 1  # the duals are spread over several shards
    hr = sorted((setup["root"] / "hr").glob("*.png"))
    pack = save_image_pack(tmp_path / "hr.npz", {f.stem: read_image(f) for f in hr})

    _run(_args(setup, tmp_path / "files", "--duals", str(one[0])))
    args = _args(setup, tmp_path / "shards", "--duals",
                 str(tmp_path / "run" / "train_state.index.json"))
    args[args.index(str(setup["root"] / "hr"))] = str(pack)
    _run(args)
    a = load_tensors(tmp_path / "files" / "compressed.safetensors")[0]
    b = load_tensors(tmp_path / "shards" / "compressed.safetensors")[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
