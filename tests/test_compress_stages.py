"""`vsr compress` stage by stage on a drn-t network and real image files: a stage takes only
the files made from the same --checkpoint, and bad widths or seeds are one clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_train_inputs import smooth_image

from vsr.cli.main import cli
from vsr.errors import ConfigError
from vsr.imageio import write_image
from vsr.models import DRN, REGISTRY, CheckpointInfo, save_model
from vsr.models.checkpoint import read_info

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four 64x64 training images; two drn-t-x2 networks of different weights (a, b) and a
    narrower DRN (c), each saved as a checkpoint."""
    root = tmp_path_factory.mktemp("compress_stages")
    (root / "hr").mkdir()
    for i in range(4):
        write_image(root / "hr" / f"{i}.png", smooth_image(i, 64))
    out = {"root": root, "hr": root / "hr"}
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        net = REGISTRY.get("drn-t-x2").build()
        save_model(root / f"{name}.safetensors", net, CheckpointInfo(
            arch="drn", hparams=net.hparams, scale=2, name="drn-t-x2"))
        out[name] = root / f"{name}.safetensors"
    net = DRN(scale=2, n_feats=8, n_blocks=[2])
    save_model(root / "c.safetensors", net, CheckpointInfo(arch="drn", hparams=net.hparams,
                                                           scale=2, name="narrow"))
    out["c"] = root / "c.safetensors"
    return out


def _args(files: dict[str, Path], checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["compress", "--checkpoint", str(checkpoint), "--ratio", "0.5", "--method", "l1",
            "--data", str(files["hr"]), "--out", str(out), "--batch-size", "2", "--patch", "8",
            "--dual-warmup", "1", "--finetune-steps", "2", "--val-every", "2",
            "--threads", "1", "--json", *extra]


def _ok(args: list[str]) -> dict:
    got = CliRunner().invoke(cli, args)
    assert got.exit_code == 0, (got.output, got.exception)
    return json.loads(got.stdout.strip().splitlines()[-1])


def _refused(args: list[str]) -> str:
    got = CliRunner().invoke(cli, args)
    assert isinstance(got.exception, ConfigError), (got.output, got.exception)
    return str(got.exception)


def test_a_stage_refuses_the_files_of_another_checkpoint(files: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """search.json and pruned.safetensors were taken whatever --checkpoint made them: another
    network's went on (exit 0, "params 23626 -> 51394") or failed inside ("need 16 widths,
    got 8"). They record the weights' content hash, and a stage refuses a mismatch naming
    both checkpoints; the same weights under another path are accepted."""
    out = tmp_path / "out"
    _ok(_args(files, files["a"], out, "--stage", "search"))
    record = json.loads((out / "search.json").read_text())
    assert len(record["checkpoint_sha256"]) == 64
    for other in ("b", "c"):
        message = _refused(_args(files, files[other], out, "--stage", "prune"))
        assert f"search.json was made from {files['a']}" in message
        assert f"not from --checkpoint {files[other]}" in message
    assert not (out / "pruned.safetensors").exists()
    copy = tmp_path / "a-copy.safetensors"
    shutil.copy(files["a"], copy)
    _ok(_args(files, copy, out, "--stage", "prune"))
    assert read_info(out / "pruned.safetensors").provenance["base_sha256"] == \
        record["checkpoint_sha256"]
    message = _refused(_args(files, files["b"], out, "--stage", "finetune"))
    assert f"pruned.safetensors was made from {copy}" in message
    shutil.copy(files["b"], copy)  # the same path, other weights
    message = _refused(_args(files, copy, out, "--stage", "finetune"))
    assert f"not from --checkpoint {copy}" in message
    assert not (out / "compressed.safetensors").exists()
    shutil.copy(files["a"], copy)
    summary = _ok(_args(files, copy, out, "--stage", "finetune"))
    assert summary["stages"] == ["finetune"]


def test_widths_that_are_not_integers_are_one_clear_error(files: dict[str, Path],
                                                          tmp_path: Path) -> None:
    """--widths-from (or a search.json) with 1e400 (JSON for infinity) failed with 'internal
    error: OverflowError'; widths must be integers that fit the network, and a bad list is
    one ConfigError naming its file. Nothing is written."""
    bad = tmp_path / "bad.json"
    for widths, words in (([1e400] * 8, "widths must be a list of integers, not [Infinity"),
                          ([8.0] * 8, "widths must be a list of integers"),
                          ([8] * 7, "do not fit this network (its 8 compressible layers"),
                          ([0] * 8, "do not fit")):
        bad.write_text(json.dumps({"widths": widths}).replace("Infinity", "1e400"))
        out = tmp_path / "out"
        message = _refused(_args(files, files["a"], out, "--widths-from", str(bad)))
        assert message.startswith(f"{bad}: ") and words in message, message
        assert not out.exists()
    # a search.json edited (or damaged) the same way, read by --stage prune
    out = tmp_path / "s"
    _ok(_args(files, files["a"], out, "--stage", "search"))
    record = json.loads((out / "search.json").read_text())
    (out / "search.json").write_text(json.dumps({**record, "widths": [1e400] * 8}))
    message = _refused(_args(files, files["a"], out, "--stage", "prune"))
    assert f"{out / 'search.json'}: widths must be a list of integers" in message
    assert not (out / "pruned.safetensors").exists()


def test_a_compressed_model_is_named_by_its_pruning_ratio_honestly(files: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    """--ratio 0.999 named the model drn-t-x2-drc100 (the ratio rounded to a whole percent):
    the name now says 99.9; whole percentages keep their names (drc50)."""
    out = tmp_path / "out"
    _ok(_args(files, files["a"], out, "--ratio", "0.999"))
    assert read_info(out / "compressed.safetensors").name == "drn-t-x2-l199.9"
    assert read_info(out / "pruned.safetensors").name == "drn-t-x2-l199.9"
    from vsr.compress.run import ratio_tag

    assert [ratio_tag(r) for r in (0.5, 0.25, 0.1234, 0.0001, 0.99999)] == \
        ["50", "25", "12.3", "0.01", "99.999"]
