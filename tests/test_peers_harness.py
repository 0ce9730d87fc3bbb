"""benchmarks/peers.py: peer wrappers keep the handle contract; its quality path is vsr eval's."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("ncnn")
pytest.importorskip("cv2")

from conftest import SHARED  # noqa: E402

from vsr.evaluate import evaluate_image  # noqa: E402
from vsr.imageio import read_image  # noqa: E402
from vsr.models import load_model  # noqa: E402


def _entry(peers, name: str):
    entries, _ = peers.peer_entries(threads=1)
    found = [e for e in entries if e.name == name]
    if not found:
        pytest.skip(f"{name} is not installed here")
    return found[0]


@pytest.mark.parametrize("name, scale", [("span-x2-ch48", 2), ("espcn-x4", 4)])
def test_peer_wrapper_returns_uint8_at_scale(peers, name, scale):
    handle = _entry(peers, name).make()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 20, 28), generator=g, dtype=torch.uint8)
    y = handle.upscale(x)
    assert handle.scale == scale
    assert y.dtype == torch.uint8 and y.shape == (2, 3, 20 * scale, 28 * scale)
    # a frame's output depends on that frame only (the batch is not mixed up)
    assert torch.equal(handle.upscale(x[1:]), y[1:])


def test_quality_path_is_vsr_eval_protocol(peers, tmp_path):
    set5 = SHARED / "benchmark" / "Set5" / "HR"
    if not set5.is_dir():
        pytest.skip("shared data not present")
    image = set5 / "bird.png"
    (tmp_path / "HR").mkdir()
    (tmp_path / "HR" / image.name).symlink_to(image)
    handle = load_model("drn-t-x2-drc50")
    row = peers.quality(handle, tmp_path, 2)
    psnr, ssim = evaluate_image(handle, read_image(image), 2)
    assert row["images"] == 1 and row["scale"] == 2
    assert row["psnr"] == round(psnr, 4) and row["ssim"] == round(ssim, 5)
