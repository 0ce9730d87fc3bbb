"""Training data: HR patches with their LR pyramid, sampled deterministically per step.

The batch of step ``t`` is a pure function of (seed, t): a resumed run, or a run split over
several ranks, sees exactly the same samples as one uninterrupted process.

HR images are decoded once into one flat uint8 buffer (on the training device when it is a
GPU: pinned, then copied once). A batch of crops, flips and transposes is one gather from that
buffer, its indices built on the buffer's device from a few random numbers per crop drawn on
the CPU, so nothing per pixel runs in Python and a GPU never waits for the host. Image packs
(``.npz`` files of uint8 (3, H, W) arrays, :func:`save_image_pack`) need only numpy to read:
machines without PyAV train from them.
"""

from __future__ import annotations

import hashlib
import logging
import math
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from vsr.errors import ConfigError, InputError
from vsr.resize import imresize

log = logging.getLogger(__name__)

PACK_SUFFIX = ".npz"


# the largest seed a run takes: torch.manual_seed(seed) and the packed generator seeds of
# step_generator (below 2**63 only for seeds under 10**12) must hold it ("Overflow" past that)
MAX_SEED = 2**31 - 1
_PACKED_STREAMS = 7  # streams 0..6: the original arithmetic seeds (committed runs draw them)
_HASHED = 1 << 63  # the top bit marks a hashed seed; packed ones stay below it


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one step and one independent stream (0: crops, 1: adaptation
    frames, 2: degradations, more for compression; see :func:`rank_stream` under DDP).

    Every (seed, step, stream) gets its own generator seed. Streams 0..6 keep their original
    arithmetic seed ``(seed * 1_000_003 + step) * 7 + stream``, distinct for these seven
    (committed runs reproduce); it would repeat stream ``s - 7`` of step ``step + 1`` for
    higher streams, so those get a 63-bit BLAKE2b of the triple with the top bit set instead:
    never a packed seed (those stay below 2**63 for non-negative seeds below 10**12), and
    distinct from each other but for a chance of about 2**-63 per pair.

    Raises:
        ConfigError: a negative stream.
    """
    if stream < 0:
        raise ConfigError(f"stream must be >= 0, got {stream}")
    if stream < _PACKED_STREAMS:
        return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7 + stream)
    key = f"vsr-step-generator/{seed}/{step}/{stream}".encode()
    digest = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    return torch.Generator().manual_seed(digest | _HASHED)


def rank_stream(stream: int, rank: int) -> int:
    """The stream a DDP rank uses for draws of its own share (e.g. its crops' degradations):
    ``stream`` itself on rank 0, so a single process draws what it always drew, and a stream
    of its own (>= 16, hashed) on every other rank."""
    if not 0 <= stream < 16 or rank < 0:
        raise ConfigError(f"need 0 <= stream < 16 and rank >= 0, got {stream}, {rank}")
    return stream + 16 * rank


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] floats to the 8-bit grid, as real LR frames are."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def lr_pyramid(hr: torch.Tensor, scale: int) -> list[torch.Tensor]:
    """[LR_S, ..., LR_2, HR]: MATLAB bicubic of ``hr`` by 1/S, 2/S, ... (quantised), then HR.

    hr: float (N, 3, H, W) in [0, 1] with H, W multiples of ``scale``; any device (the resize
    is a batched matmul there).
    """
    phase = int(math.log2(scale))
    levels = [quantize(imresize(hr, 2**k / scale)) for k in range(phase)]
    return levels + [hr]


_PACK_FORMAT = "vsr-image-pack/1 sub"  # rows stored as differences of neighbours (PNG's Sub)


def pack_filter(img: torch.Tensor) -> np.ndarray:
    """uint8 (3, H, W) -> what a pack stores: each pixel minus its left neighbour, mod 256
    (deflate then takes about 15% less than on the pixels themselves)."""
    a = img.numpy()
    return np.diff(a, axis=-1, prepend=np.zeros((*a.shape[:-1], 1), np.uint8))


def save_image_pack(path: str | Path, images: Mapping[str, torch.Tensor]) -> Path:
    """Write named uint8 (3, H, W) images to one compressed ``.npz`` (numpy alone reads it)."""
    path = Path(path)
    if path.suffix != PACK_SUFFIX:
        raise ValueError(f"an image pack is a {PACK_SUFFIX} file, got {path}")
    arrays = {"__format__": np.array(_PACK_FORMAT)}
    for name, img in images.items():
        if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"{name}: need uint8 (3, H, W), got {img.dtype} {tuple(img.shape)}")
        arrays[name] = pack_filter(img)
    np.savez_compressed(path, **arrays)
    return path


def load_image_pack(path: str | Path) -> dict[str, torch.Tensor]:
    """The images of a pack, by name (sorted), uint8 (3, H, W) on the CPU.

    Every array's header is checked before any is decompressed: a few hundred KB of deflate
    can declare gigabytes.

    Raises InputError for a missing or malformed pack, an array that is not uint8
    (3, H, W), or an image over the pixel limit (``VSR_MAX_PIXELS``).
    """
    try:
        headers = _pack_headers(path)
        fmt = headers.get("__format__")
        if fmt is None or fmt[0] != () or fmt[1].kind != "U" or fmt[1].itemsize > 256:
            raise InputError(f"{path}: not a {_PACK_FORMAT} image pack")
        limit, env = _max_pixels()
        for name, (shape, dtype) in sorted(headers.items()):
            if name == "__format__":
                continue
            if dtype != np.uint8 or len(shape) != 3 or shape[0] != 3:
                raise InputError(f"{path}: {name} is {dtype} {shape}, not uint8 (3, H, W)")
            if shape[1] * shape[2] > limit:
                raise InputError(f"{path}: {name} declares a {shape[2]}x{shape[1]} picture "
                                 f"({shape[1] * shape[2]:,} pixels), over the limit of "
                                 f"{limit:,} pixels; set {env} to raise it if the file is "
                                 "trusted")
        with np.load(path, allow_pickle=False) as pack:
            if str(pack["__format__"]) != _PACK_FORMAT:
                raise InputError(f"{path}: not a {_PACK_FORMAT} image pack")
            return {k: torch.from_numpy(np.cumsum(pack[k], axis=-1, dtype=np.uint8))
                    for k in sorted(pack.files) if k != "__format__"}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        # a cut or damaged pack fails in zipfile or zlib, not with an OSError
        raise InputError(f"{path}: cannot read image pack ({exc})") from None


def _pack_headers(path: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of each array of an ``.npz``, by name, from the .npy headers alone
    (only their first bytes are inflated). Raises ValueError for a member that is not .npy,
    zipfile's and zlib's errors for a damaged file."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for member in zf.infolist():
            if not member.filename.endswith(".npy"):
                raise ValueError(f"{member.filename} is not a .npy array")
            with zf.open(member) as fh:
                version = np.lib.format.read_magic(fh)
                read = {(1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read is None:
                    raise ValueError(f"{member.filename}: .npy version {version} not supported")
                shape, _, dtype = read(fh)
            out[member.filename[:-4]] = (tuple(shape), dtype)
    return out


def _max_pixels() -> tuple[int, str]:
    """The picture size limit and its variable (vsr.io.image's, which needs PyAV)."""
    try:
        from vsr.io.image import MAX_PIXELS_ENV, max_pixels
    except ImportError:  # pragma: no cover - packs train without PyAV: the same limit
        from vsr.limits import env_limit

        return env_limit("VSR_MAX_PIXELS", 50_000_000), "VSR_MAX_PIXELS"
    return max_pixels(), MAX_PIXELS_ENV


def load_images(source: str | Path) -> list[torch.Tensor]:
    """uint8 (3, H, W) images of a folder (decoded through PyAV; a benchmark set's ``HR/``
    subfolder where it has one, as ``vsr eval`` reads it) or of an ``.npz`` pack."""
    path = Path(source)
    if path.suffix == PACK_SUFFIX and path.is_file():
        images = list(load_image_pack(path).values())
    else:
        from vsr.imageio import list_images, read_image  # PyAV only where files are decoded

        folder = path / "HR" if (path / "HR").is_dir() else path
        images = [read_image(p) for p in list_images(folder)]
    if not images:
        raise InputError(f"{source}: no images found")
    return images


class _Packed:
    """Images as one flat uint8 buffer on a device, with per-image offset, height and width."""

    def __init__(self, images: Sequence[torch.Tensor], device: torch.device) -> None:
        flat = torch.cat([im.reshape(-1) for im in images])
        if device.type == "cuda":
            flat = flat.pin_memory()
        self.flat = flat.to(device, non_blocking=True)
        self.device = device
        self.hw = torch.tensor([im.shape[-2:] for im in images], dtype=torch.int64)
        sizes = 3 * self.hw[:, 0] * self.hw[:, 1]
        self.offsets = torch.cumsum(sizes, 0) - sizes


class PatchSampler:
    """HR images held in memory (uint8), random crops with flips and transpose.

    ``images`` (a list of uint8 (3, H, W) tensors) may be replaced; the flat buffer that the
    crops are gathered from is rebuilt from it on the next sample.
    """

    def __init__(self, folders: Sequence[str | Path], hr_patch: int) -> None:
        self.hr_patch = hr_patch
        images: list[torch.Tensor] = []
        skipped = 0
        for folder in folders:
            for img in load_images(folder):
                if min(img.shape[-2:]) < hr_patch:
                    skipped += 1
                    continue
                images.append(img)
        if not images:
            raise InputError(f"no training image is at least {hr_patch}x{hr_patch} pixels")
        if skipped:  # most of a set can go: the user must hear of it
            log.warning("skipped %d of %d training images: smaller than the %d px HR patch",
                        skipped, skipped + len(images), hr_patch)
        self.device = torch.device("cpu")
        self.images = images

    @property
    def images(self) -> list[torch.Tensor]:
        return self._images

    @images.setter
    def images(self, value: list[torch.Tensor]) -> None:
        self._images = list(value)
        self._pack: _Packed | None = None

    def to(self, device: torch.device | str) -> PatchSampler:
        """Gather crops on ``device`` from now on (the images are copied there once)."""
        self.device = torch.device(device)
        self._pack = None
        return self

    def __len__(self) -> int:
        return len(self.images)

    def _packed(self) -> _Packed:
        if self._pack is None:
            self._pack = _Packed(self.images, self.device)
        return self._pack

    def crops(self, n: int, gen: torch.Generator, rows: slice = slice(None)) -> torch.Tensor:
        """Rows ``rows`` of the n crops that ``gen`` draws: uint8 (m, 3, P, P) on the device.

        The draws are those of all n crops whatever ``rows`` is, so ranks that each take their
        share of a global batch see the samples of one process.
        """
        p = self.hr_patch
        pack = self._packed()
        idx = torch.randint(len(self.images), (n,), generator=gen)[rows]
        rnd = torch.rand(n, 5, generator=gen)[rows].double()
        hw = pack.hw[idx]
        y = (rnd[:, 0] * (hw[:, 0] - p + 1)).long()  # floor of a non-negative value, as int()
        x = (rnd[:, 1] * (hw[:, 1] - p + 1)).long()
        flips = (rnd[:, 2:] < 0.5).long()  # flip columns, flip rows, transpose
        params = torch.stack([pack.offsets[idx], hw[:, 0] * hw[:, 1], hw[:, 1], y, x,
                              *flips.unbind(1)], 1)
        if pack.device.type == "cuda":
            params = params.pin_memory()
        params = params.to(pack.device, non_blocking=True)
        return torch.take(pack.flat, _gather_index(params, p))

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """n HR patches, float (n, 3, P, P) in [0, 1], on the sampler's device."""
        return self.crops(n, gen).float() / 255.0


def _gather_index(params: torch.Tensor, p: int) -> torch.Tensor:
    """Flat indices (m, 3, p, p) of crops described by int64 (m, 8) rows of (offset, plane
    size, width, y, x, flip columns, flip rows, transpose), on ``params``' device.

    Output (a, b) takes crop element (u, v) = (b, a) if transposed else (a, b), after the crop
    was flipped: row y + (p - 1 - u if rows flipped else u), column likewise. Rows and columns
    are worked out per line (m, p) and broadcast once: few large ops, which matters on a busy
    CPU where each multi-threaded op can wait for a descheduled thread.
    """
    off, plane, w, y, x, fc, fr, tr = (c.view(-1, 1) for c in params.unbind(1))
    t = torch.arange(p, device=params.device).view(1, p)
    rows = (y + t + fr * (p - 1 - 2 * t)) * w  # (m, p): offset of crop row t
    cols = x + t + fc * (p - 1 - 2 * t)  # (m, p): column of crop column t
    along_a = torch.where(tr.bool(), cols, rows)  # output row a reads crop column a if transposed
    along_b = torch.where(tr.bool(), rows, cols)
    chan = off + torch.arange(3, device=params.device).view(1, 3) * plane  # (m, 3)
    return chan[:, :, None, None] + along_a[:, None, :, None] + along_b[:, None, None, :]


_VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".ts", ".m4v", ".flv"}


def read_video_frames(path: str | Path, count: int) -> list[torch.Tensor]:
    """``count`` frames spread evenly over a video, through decord's random access.

    Returns uint8 (3, H, W) tensors. Raises InputError for an unreadable video.
    """
    try:
        import decord
    except ImportError as exc:  # pragma: no cover - decord is a declared dependency
        raise InputError(f"reading {path} for adaptation needs decord ({exc})") from None
    _probe_video(path)
    from vsr.io.paths import file_url  # not at the top: vsr.io imports PyAV

    try:
        reader = decord.VideoReader(file_url(path), ctx=decord.cpu(0))
        total = len(reader)
        if total == 0:
            raise InputError(f"{path}: video has no frames")
        n = min(count, total)
        indices = [round(i * (total - 1) / max(1, n - 1)) for i in range(n)]
        frames = reader.get_batch(indices).asnumpy()
    except (decord.DECORDError, RuntimeError) as exc:  # decord raises bare RuntimeErrors too
        raise InputError(f"{path}: cannot read video ({' '.join(str(exc).split())[:200]})") \
            from None
    return [torch.from_numpy(f).permute(2, 0, 1).contiguous() for f in frames]


def _probe_video(path: str | Path) -> None:
    """Open ``path`` with PyAV first, where it is installed: a file that is not a video fails
    here with one InputError, before decord prints its own libav and reader log lines."""
    try:
        from vsr.io.source import PyAVSource
    except ImportError:  # pragma: no cover - machines without PyAV rely on decord's error
        return
    with PyAVSource(path):
        pass


class LRSampler:
    """Unpaired real low-resolution frames (videos or image folders) for adaptation."""

    def __init__(self, sources: Sequence[str | Path], patch: int, frames_per_video: int) -> None:
        self.patch = patch
        self.frames: list[torch.Tensor] = []
        for src in sources:
            path = Path(src)
            if path.is_dir():
                self.frames += load_images(path)
            elif path.suffix.lower() in _VIDEO_SUFFIXES:
                self.frames += read_video_frames(path, frames_per_video)
            elif path.is_file():
                from vsr.imageio import read_image

                self.frames.append(read_image(path))
            else:
                raise InputError(f"{src}: no such adaptation video or folder")
        self.frames = [f for f in self.frames if min(f.shape[-2:]) >= patch]
        if not self.frames:
            raise InputError(f"no adaptation frame is at least {patch}x{patch} pixels")

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """n LR patches, float (n, 3, patch, patch) in [0, 1] (no flips: real content)."""
        p = self.patch
        idx = torch.randint(len(self.frames), (n,), generator=gen).tolist()
        pos = torch.rand(n, 2, generator=gen).tolist()
        out = torch.empty(n, 3, p, p, dtype=torch.uint8)
        for i, (k, (ry, rx)) in enumerate(zip(idx, pos, strict=True)):
            f = self.frames[k]
            y = int(ry * (f.shape[-2] - p + 1))
            x = int(rx * (f.shape[-1] - p + 1))
            out[i] = f[:, y:y + p, x:x + p]
        return out.float() / 255.0
