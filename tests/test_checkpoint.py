"""Self-describing checkpoints: round trips, and refusal of anything that is not one."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vsr.errors import CheckpointError
from vsr.models import DRN, CheckpointInfo, load_model, load_network, save_model
from vsr.models.checkpoint import read_info


def _pruned() -> DRN:
    torch.manual_seed(3)
    return DRN(scale=4, n_feats=8, n_blocks=[2, 1], down_widths=[4, 12],
               rcab_widths=[[8, 20], [12]], up_widths=[16, 8]).eval()


def _save(net: DRN, path: Path, **kw) -> Path:
    info = CheckpointInfo(arch="drn", hparams=net.hparams, scale=net.scale, name="pruned-test",
                          provenance={"test": True})
    return save_model(path, net, info, **kw)


def test_round_trip_of_pruned_widths_gives_identical_outputs(tmp_path: Path) -> None:
    net = _pruned()
    path = _save(net, tmp_path / "p.safetensors")
    loaded, info = load_network(path)
    assert info.hparams == net.hparams and info.scale == 4 and info.name == "pruned-test"
    assert info.provenance == {"test": True}
    x = torch.rand(1, 3, 17, 19)  # at least 16 a side: smaller pictures are padded (handle)
    with torch.inference_mode():
        for a, b in zip(net(x), loaded(x), strict=True):
            assert torch.equal(a, b)
    handle = load_model(path)
    assert handle.scale == 4 and handle.name == "pruned-test"
    assert torch.equal(handle.upscale(x), net(x, return_all=False).clamp(0, 1))


def test_fp16_checkpoint_loads_into_fp32(tmp_path: Path) -> None:
    net = _pruned()
    path = _save(net, tmp_path / "h.safetensors", dtype=torch.float16)
    loaded, _ = load_network(path)
    assert next(loaded.parameters()).dtype == torch.float32
    x = torch.rand(1, 3, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x)[-1], net(x)[-1], atol=2e-2, rtol=0)


def test_save_is_atomic_no_temp_left(tmp_path: Path) -> None:
    _save(_pruned(), tmp_path / "a.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_pickle_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _Evil.marker = marker
    for name, writer in [("evil.safetensors", lambda f: pickle.dump(_Evil(), f, protocol=4)),
                         ("torch.pt", lambda f: torch.save({"w": torch.zeros(2)}, f))]:
        path = tmp_path / name
        with path.open("wb") as fh:
            writer(fh)
        with pytest.raises(CheckpointError):
            load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"1234", random.Random(0).randbytes(4096),
                                     (10**9).to_bytes(8, "little") + b"{}"],
                         ids=["empty", "short", "random", "huge-header"])
def test_garbage_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_network(path)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = _save(_pruned(), tmp_path / "t.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupt"):
        load_network(path)


def test_wrong_shapes_are_refused(tmp_path: Path) -> None:
    net = _pruned()
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    sd["head.weight"] = torch.zeros(9, 3, 3, 3)
    info = CheckpointInfo(arch="drn", hparams=net.hparams, scale=4)
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path), metadata=info.to_metadata())
    with pytest.raises(CheckpointError, match="do not fit"):
        load_network(path)


def test_missing_metadata_unknown_arch_and_bad_hparams_are_refused(tmp_path: Path) -> None:
    net = _pruned()
    plain = tmp_path / "plain.safetensors"
    save_file(net.state_dict(), str(plain))
    with pytest.raises(CheckpointError, match="not a vsr checkpoint"):
        load_network(plain)
    for arch, hparams in [("os.system", net.hparams), ("drn", {**net.hparams, "evil": 1}),
                          ("drn", {**net.hparams, "scale": 3})]:
        info = CheckpointInfo(arch=arch, hparams=hparams, scale=4)
        path = tmp_path / "bad.safetensors"
        save_file(net.state_dict(), str(path), metadata=info.to_metadata())
        with pytest.raises(CheckpointError):
            load_network(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such"):
        read_info(tmp_path / "nope.safetensors")


def test_saved_checkpoint_has_ordinary_permissions(tmp_path: Path) -> None:
    path = _save(_pruned(), tmp_path / "m.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_path_that_is_no_regular_file_is_named(tmp_path) -> None:
    """`vsr train --init /dev/null` said 'no such checkpoint file' of a file that exists."""
    from vsr.models.checkpoint import read_header

    with pytest.raises(CheckpointError, match="not a regular file"):
        read_header("/dev/null")
    with pytest.raises(CheckpointError, match="is a folder"):
        read_header(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_header(tmp_path / "missing.safetensors")


def test_a_users_checkpoint_named_like_a_shipped_model_says_whose_it_is(tmp_path):
    """vsr train names its network by the architecture and vsr compress by the base and
    ratio: a user's 2-step run compressed came out of `vsr upscale --json` and `vsr export`
    as "drn-t-x2-drc50", the shipped default's name, for a network 20 dB worse. A file that
    is not the shipped one of its name is reported with its own file name."""
    from vsr.models import REGISTRY, create_model

    torch.manual_seed(0)
    net = create_model("drn-t-x2", pretrained=False)
    mine = tmp_path / "compressed.safetensors"
    save_model(mine, net, CheckpointInfo(arch="drn", hparams=dict(net.hparams), scale=2,
                                         name="drn-t-x2"))
    assert load_model(str(mine)).name == "drn-t-x2 (compressed.safetensors)"
    shipped = REGISTRY.get("drn-t-x2").weights_path
    if shipped is not None and shipped.is_file():
        assert load_model(str(shipped)).name == "drn-t-x2"
