"""One recipe behind every job: the same clip through `upscale_file`, a one-file `vsr batch`
and `vsr bench` gets the same backend and bit-identical frames (lossless RGB output)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import make_clip

from vsr.errors import ConfigError
from vsr.io.sink import EncodeConfig
from vsr.upscale import UpscaleConfig, upscale_file

MODEL = "drn-t-x2"
LOSSLESS = ("--codec", "ffv1", "--pix-fmt", "bgr0")  # RGB: the model's bytes, exactly


def _vsr(*args: str) -> dict:
    import torch

    # the same thread count as this process, so every run computes in the same order
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    r = subprocess.run([sys.executable, "-m", "vsr", *args, "--json"], capture_output=True,
                       text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("engine") / "c.mkv", frames=3, size=(64, 48))


def test_upscale_batch_and_bench_agree(tmp_path: Path) -> None:
    # 256x200 is above the frame size where auto prefers onnx on the CPU, so a choice that
    # depended on process state (the allocator tuning the CLI applies) would differ here
    clip = make_clip(tmp_path / "c.mkv", frames=2, size=(256, 200))
    lib = upscale_file(UpscaleConfig(input=clip, output=tmp_path / "lib.mkv", model=MODEL,
                                     device="cpu",
                                     encode=EncodeConfig(codec="ffv1", pix_fmt="bgr0")))
    batch = _vsr("batch", str(clip), "-o", str(tmp_path / "batch"), "--model", MODEL,
                 *LOSSLESS, "--devices", "cpu", "--no-progress")
    bench = _vsr("bench", "--input", str(clip), "--model", MODEL, "--device", "cpu",
                 "--frames", "2", *LOSSLESS, "--output", str(tmp_path / "bench.mkv"))
    assert [d["backend"] for d in batch["done"]] == [lib.backend] == [bench["backend"]]
    ours = _frames(tmp_path / "lib.mkv")
    assert len(ours) == 2 and ours[0].shape == (400, 512, 3)
    for other in (Path(batch["done"][0]["output"]), tmp_path / "bench.mkv"):
        theirs = _frames(other)
        assert len(theirs) == len(ours)
        for a, b in zip(ours, theirs, strict=True):
            assert np.array_equal(a, b), other


@pytest.mark.parametrize("backend", ["onnx", "eager"])
def test_batch_runs_the_backend_asked_for(small_clip: Path, tmp_path: Path,
                                          backend: str) -> None:
    pytest.importorskip("onnxruntime")
    report = _vsr("batch", str(small_clip), "-o", str(tmp_path / "out"), "--model", MODEL,
                  "--backend", backend, "--devices", "cpu", "--no-progress")
    assert [d["backend"] for d in report["done"]] == [backend]


def test_images_in_a_batch_load_the_model_once(tmp_path: Path) -> None:
    """Every image of a folder goes through the worker's cached handle (one load)."""
    from vsr.engine import ModelCache
    from vsr.options import ModelOptions

    cache = ModelCache()
    opts = ModelOptions(model="bicubic", scale=2)
    a, b = cache.handle(opts, "cpu"), cache.handle(opts, "cpu")
    assert a is b
    assert cache.handle(ModelOptions(model="bicubic", scale=3), "cpu") is not a
    with pytest.raises(ConfigError):
        ModelOptions(model="bicubic", scale=2, precision="fp8")


def test_a_released_handle_is_kept_by_nothing_in_the_cache() -> None:
    """The stream loads its model before any frame (to fail early), then for the frames; the
    first, if another precision, is released: the cache must then hold no reference to it."""
    import gc
    import weakref

    import numpy as np

    from vsr.engine import ModelCache
    from vsr.options import ModelOptions

    cache = ModelCache()
    opts = ModelOptions(model="bicubic", scale=2)
    first = cache.handle(opts, "cpu")
    other = cache.handle(ModelOptions(model="bicubic", scale=3), "cpu")
    cache.prepare(first, opts, np.zeros((8, 8, 3), np.uint8))
    gone = weakref.ref(first)
    cache.release(first)
    del first
    gc.collect()
    assert gone() is None
    assert cache.handle(ModelOptions(model="bicubic", scale=3), "cpu") is other
    assert cache.handle(opts, "cpu") is not None  # loaded anew when asked again


def _fake_backend(monkeypatch, backend: str, on_build=None, *,
                  comes_to: str | None = None) -> tuple:
    """``vsr.backends.prepare_for_frame`` replaced by a build that calls ``on_build(name)``
    (the backend asked for) and gives a runner that says it is ``comes_to`` (default:
    ``backend``); returns a fresh ModelCache, options asking for ``backend`` (bicubic x2),
    their handle and an 8x8 frame."""
    import vsr.backends
    from vsr.engine import ModelCache
    from vsr.options import ModelOptions

    class Runner:
        def __init__(self) -> None:
            self.backend, self.notes = comes_to or backend, []

    def prepare_for_frame(handle, name, image, *, batch):
        if on_build is not None:
            on_build(name)
        return Runner()

    monkeypatch.setattr(vsr.backends, "prepare_for_frame", prepare_for_frame)
    cache = ModelCache()
    opts = ModelOptions(model="bicubic", scale=2, backend=backend)
    return cache, opts, cache.handle(opts, "cpu"), np.zeros((8, 8, 3), np.uint8)


def _prepare_in_threads(cache, handle, opts, image, threads: int) -> list:
    """``cache.prepare`` from ``threads`` threads alive at once (no thread id reused): what
    each got, or raised."""
    import threading

    got: list[object] = []
    alive = threading.Barrier(threads, timeout=60)

    def prepare() -> None:
        try:
            got.append(cache.prepare(handle, opts, image))
        except BaseException as exc:  # noqa: BLE001  (the test reports it)
            got.append(exc)
        alive.wait()

    workers = [threading.Thread(target=prepare) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    return got


@pytest.mark.parametrize(("backend", "builds"), [("eager", 1), ("onnx", 1), ("compile", 2),
                                               ("tensorrt", 2)])
def test_threads_share_a_prepared_backend_only_where_it_is_thread_safe(
        monkeypatch, backend: str, builds: int) -> None:
    """Two threads of one ModelCache prepare the same model and frame size: an eager or onnx
    runner is shared, a compile (CUDA graphs) or tensorrt one is each thread's own."""
    made: list[str] = []
    cache, opts, handle, image = _fake_backend(monkeypatch, backend, made.append)
    got = _prepare_in_threads(cache, handle, opts, image, 2)
    assert len(made) == builds
    assert (got[0] is got[1]) == (builds == 1)
    assert cache.prepare(handle, opts, image) is not None  # and again in this thread


@pytest.mark.parametrize("backend", ["compile", "tensorrt", "auto"])
def test_threads_build_their_own_backends_at_once(monkeypatch, backend: str) -> None:
    """Each thread's own compile or tensorrt runner was built under one lock every thread
    took: N workers each building theirs waited for each other's builds (minutes apiece for
    compile). They build at once now; with `auto`, which tells what it comes to only once
    built, from the second build on."""
    import threading

    made: list[str] = []
    together = threading.Barrier(2, timeout=20)  # two builds under way at one time

    def build(name: str) -> None:
        made.append(name)
        if backend != "auto" or len(made) > 1:
            together.wait()  # returns once another thread's build is under way too

    cache, opts, handle, image = _fake_backend(monkeypatch, backend, build, comes_to=(
        "compile" if backend == "auto" else backend))  # auto: what it comes to here
    threads = 3 if backend == "auto" else 2
    got = _prepare_in_threads(cache, handle, opts, image, threads)
    assert [type(p).__name__ for p in got] == ["Prepared"] * threads, got
    assert len(made) == threads and len({id(p) for p in got}) == threads


def test_a_thread_never_takes_a_backend_another_thread_prepared_for_itself(monkeypatch) -> None:
    """A compile runner (CUDA graphs: per thread) prepared by a thread that has ended is not
    given to the next thread, which often gets the same thread id (kept by id, it was)."""
    import threading

    import vsr.backends
    from vsr.engine import ModelCache
    from vsr.options import ModelOptions

    made: list[int] = []

    class Runner:
        backend, notes = "compile", []

    def prepare_for_frame(handle, name, image, *, batch):
        made.append(threading.get_ident())
        return Runner()

    monkeypatch.setattr(vsr.backends, "prepare_for_frame", prepare_for_frame)
    cache = ModelCache()
    opts = ModelOptions(model="bicubic", scale=2, backend="compile")
    handle = cache.handle(opts, "cpu")
    image = np.zeros((8, 8, 3), np.uint8)
    got: list[object] = []
    for _ in range(2):  # one after the other: the second thread starts once the first ended
        t = threading.Thread(target=lambda: got.append(cache.prepare(handle, opts, image)))
        t.start()
        t.join(30)
    assert len(made) == 2 and got[0] is not got[1]


def test_batch_takes_every_image_format_eval_reads(tmp_path: Path) -> None:
    """One list of image suffixes: a folder batch upscales the .bmp/.tif/.webp/.ppm files
    `vsr eval` reads (it used to skip all but PNG and JPEG), each into its own format."""
    import torch

    from vsr.imageio import list_images, read_image, write_image
    from vsr.jobs import BatchConfig, JobOptions, run_batch

    folder = tmp_path / "in"
    folder.mkdir()
    picture = torch.randint(0, 256, (3, 12, 16), dtype=torch.uint8)
    names = ["a.png", "b.bmp", "c.tif", "d.webp", "e.ppm", "f.jpg"]
    for name in names:
        write_image(folder / name, picture)
    assert [p.name for p in list_images(folder)] == names
    result = run_batch(BatchConfig(inputs=(str(folder),), output_dir=tmp_path / "out",
                                   options=JobOptions(model="bicubic", scale=2),
                                   devices=("cpu",)))
    assert not result.failed
    assert sorted(Path(d["output"]).name for d in result.done) == names
    for name in names:
        out = read_image(tmp_path / "out" / name)
        assert out.shape == (3, 24, 32), name
        if name != "f.jpg":  # lossless formats: bicubic x2 of the same picture, exactly
            assert torch.equal(out, read_image(tmp_path / "out" / "a.png")), name


def test_one_device_spelt_two_ways_holds_one_copy_of_a_model() -> None:
    """The cache keyed handles by the device as spelt: `--devices cuda,cuda:0` (one GPU)
    loaded the model twice onto it. The device is keyed, and the model loaded, as the one it
    names (cpu:0 is the CPU; on a GPU, cuda is cuda:N of the current device: the next test)."""
    import torch

    from vsr.engine import ModelCache
    from vsr.options import ModelOptions

    models = ModelCache()
    options = ModelOptions(model="bicubic", scale=2, precision="fp32")
    first = models.handle(options, "cpu")
    for device in ("cpu:0", torch.device("cpu"), torch.device("cpu", 0)):
        assert models.handle(options, device) is first, device
    assert first.device == torch.device("cpu")


@pytest.mark.cuda
def test_cuda_and_cuda_of_the_current_device_hold_one_copy_of_a_model() -> None:
    import torch

    from vsr.engine import ModelCache
    from vsr.options import ModelOptions

    models = ModelCache()
    options = ModelOptions(model="bicubic", scale=2, precision="fp32")
    current = f"cuda:{torch.cuda.current_device()}"
    first = models.handle(options, "cuda")
    assert models.handle(options, current) is first
    assert models.handle(options, torch.device("cuda")) is first
    assert first.device == torch.device(current)


def test_release_lets_go_of_what_other_living_threads_prepared(monkeypatch) -> None:
    """A compile runner another thread prepared for itself, that thread still alive (a pool's
    worker), no longer keeps a released model (only the releasing thread's own were let go)."""
    import gc
    import threading
    import weakref

    import vsr.backends
    from vsr.engine import ModelCache
    from vsr.options import ModelOptions

    class Runner:
        backend, notes = "compile", []

    monkeypatch.setattr(vsr.backends, "prepare_for_frame", lambda *a, **k: Runner())
    cache = ModelCache()
    opts = ModelOptions(model="bicubic", scale=2, backend="compile")
    handle = cache.handle(opts, "cpu")
    gone = weakref.ref(handle)
    prepared, done = threading.Event(), threading.Event()

    def worker() -> None:
        cache.prepare(gone(), opts, np.zeros((8, 8, 3), np.uint8))
        prepared.set()
        done.wait(30)

    t = threading.Thread(target=worker)
    t.start()
    assert prepared.wait(30)
    cache.release(handle)
    del handle
    gc.collect()
    try:
        assert gone() is None
    finally:
        done.set()
        t.join(30)
