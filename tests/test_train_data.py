"""Training data on the device: one gather for a batch of crops, image packs without PyAV."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vsr.errors import ConfigError, InputError
from vsr.train.data import (
    PatchSampler,
    load_image_pack,
    rank_stream,
    save_image_pack,
    step_generator,
)


def _reference_crops(images: list[torch.Tensor], p: int, n: int,
                     gen: torch.Generator) -> torch.Tensor:
    """The per-sample loop the sampler replaced: slice, flip columns, flip rows, transpose."""
    idx = torch.randint(len(images), (n,), generator=gen).tolist()
    rnd = torch.rand(n, 5, generator=gen).tolist()
    out = torch.empty(n, 3, p, p, dtype=torch.uint8)
    for i, (k, r) in enumerate(zip(idx, rnd, strict=True)):
        img = images[k]
        h, w = img.shape[-2:]
        y, x = int(r[0] * (h - p + 1)), int(r[1] * (w - p + 1))
        crop = img[:, y:y + p, x:x + p]
        if r[2] < 0.5:
            crop = crop.flip(-1)
        if r[3] < 0.5:
            crop = crop.flip(-2)
        if r[4] < 0.5:
            crop = crop.transpose(-1, -2)
        out[i] = crop
    return out


@pytest.fixture()
def pack(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(1)
    images = {f"im{i}": torch.randint(0, 256, (3, 17 + 5 * i, 23 - 2 * i), generator=g,
                                      dtype=torch.uint8) for i in range(5)}
    return save_image_pack(tmp_path / "train.npz", images)


def test_gathered_crops_equal_the_per_sample_loop(pack: Path) -> None:
    sampler = PatchSampler([str(pack)], 12)
    images = list(load_image_pack(pack).values())
    for step in range(20):
        got = sampler.crops(32, step_generator(7, step))
        want = _reference_crops(images, 12, 32, step_generator(7, step))
        assert torch.equal(got, want), step
    # a rank's share is the same rows of the same draws
    share = sampler.crops(32, step_generator(7, 3), slice(8, 16))
    assert torch.equal(share, _reference_crops(images, 12, 32, step_generator(7, 3))[8:16])
    assert sampler.sample(4, step_generator(7, 0)).dtype == torch.float32


def test_crops_on_another_device_and_replaced_images(pack: Path) -> None:
    """The gather runs where the buffer lives (meta: shapes only, no CPU copy involved)."""
    sampler = PatchSampler([str(pack)], 12)
    assert sampler.to("meta").crops(4, step_generator(0, 0)).device.type == "meta"
    sampler.to("cpu")
    first = sampler.images[0]
    sampler.images = [first]  # as vsr.compress's split does: the buffer follows
    crops = sampler.crops(16, step_generator(0, 1))
    assert torch.equal(crops, _reference_crops([first], 12, 16, step_generator(0, 1)))


def test_image_pack_round_trip_and_errors(pack: Path, tmp_path: Path) -> None:
    images = load_image_pack(pack)
    assert list(images) == [f"im{i}" for i in range(5)]
    assert images["im2"].shape == (3, 27, 19) and images["im2"].dtype == torch.uint8
    with pytest.raises(ValueError, match="uint8"):
        save_image_pack(tmp_path / "bad.npz", {"x": torch.zeros(3, 4, 4)})
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="image pack"):
        load_image_pack(tmp_path / "junk.npz")
    with pytest.raises(InputError, match="at least 40x40"):
        PatchSampler([str(pack)], 40)


def _old_seed(seed: int, step: int, stream: int) -> int:
    """The generator seed every stream had before streams of DDP ranks were hashed."""
    return (seed * 1_000_003 + step) * 7 + stream


def test_streams_of_any_rank_never_share_a_generator_seed() -> None:
    """Crops (0), adaptation (1) and every rank's degradation stream, for world sizes up to
    64: no two (step, stream) of a run start the same generator (the old arithmetic gave rank
    3's degradations the adaptation draws of 7 steps later)."""
    for seed in (0, 1, 12345):
        seen: dict[int, tuple[int, int]] = {}
        for step in range(400):
            streams = {0, 1, 2, 3, 4} | {rank_stream(2, r) for r in range(64)}
            streams |= {rank_stream(1, r) for r in range(64)}
            for stream in streams:
                value = step_generator(seed, step, stream).initial_seed()
                assert value not in seen, (seed, step, stream, seen.get(value))
                seen[value] = (step, stream)
        assert len(seen) == 400 * (5 + 2 * 63)


def test_single_process_streams_draw_as_before() -> None:
    """Streams 0..6 (crops, adaptation, degradations, compression's) keep their seeds, so
    committed runs reproduce; rank 0 uses the single process's streams."""
    for seed, step, stream in [(0, 0, 0), (0, 5, 1), (3, 7, 2), (12345, 999, 4), (7, 2, 6)]:
        gen = step_generator(seed, step, stream)
        assert gen.initial_seed() == _old_seed(seed, step, stream)
        want = torch.rand(4, generator=torch.Generator().manual_seed(_old_seed(seed, step,
                                                                                stream)))
        assert torch.equal(torch.rand(4, generator=gen), want)
    assert torch.rand(2, generator=step_generator(0, 0, 0)).tolist() == pytest.approx(
        [0.49625658988952637, 0.7682217955589294], abs=0)
    assert all(rank_stream(s, 0) == s for s in range(3))
    with pytest.raises(ConfigError):
        step_generator(0, 0, -1)
    with pytest.raises(ConfigError):
        rank_stream(16, 1)


def test_a_damaged_image_pack_is_named(pack: Path, tmp_path: Path) -> None:
    """A pack cut short (a copy that stopped) or with damaged bytes failed vsr train with
    'internal error: BadZipFile' or zlib's 'Error -3 while decompressing data'."""
    data = pack.read_bytes()
    cut, flipped, header = (tmp_path / n for n in ("cut.npz", "flipped.npz", "header.npz"))
    cut.write_bytes(data[:len(data) // 2])
    flipped.write_bytes(data[:60] + b"x" * 20 + data[80:])  # inside the first member's data
    header.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    for path in (cut, flipped, header):
        with pytest.raises(InputError, match=f"{path}: cannot read image pack"):
            load_image_pack(path)


def test_a_benchmark_set_folder_trains_on_its_hr_images(tmp_path: Path) -> None:
    """`vsr eval -d Set5` reads Set5/HR; `vsr train --data Set5` said 'no images found'."""
    from PIL import Image

    from vsr.train.data import load_images

    (tmp_path / "Set" / "HR").mkdir(parents=True)
    (tmp_path / "Set" / "LR_bicubic").mkdir()
    Image.new("RGB", (20, 12), (9, 8, 7)).save(tmp_path / "Set" / "HR" / "a.png")
    Image.new("RGB", (10, 6), (9, 8, 7)).save(tmp_path / "Set" / "LR_bicubic" / "a.png")
    [image] = load_images(tmp_path / "Set")
    assert tuple(image.shape) == (3, 12, 20)
