"""The Python front door: `import vsr` is light, lists its entry points, and they work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ENTRY_POINTS = ("upscale_file", "UpscaleConfig", "UpscaleResult", "load_model", "run_batch",
                "BatchConfig", "JobOptions", "run_stream", "StreamConfig", "run_evaluation",
                "EvalConfig", "configure_runtime", "VsrError", "ConfigError")


def _python(code: str, **env: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120, env={**os.environ, **env}).stdout


def test_import_vsr_does_not_import_torch() -> None:
    out = _python("import sys, vsr; print(sorted(m for m in ('torch', 'av', 'numpy', 'click') "
                  "if m in sys.modules))")
    assert out.strip() == "[]"


def test_help_lists_the_entry_points() -> None:
    out = _python("import vsr; help(vsr)", PAGER="cat")
    for name in ENTRY_POINTS:
        assert name in out, name
    import vsr

    assert set(ENTRY_POINTS) <= set(vsr.__all__) <= set(dir(vsr))


def test_entry_points_resolve_to_the_library() -> None:
    import vsr
    from vsr.evaluate import EvalConfig, run_evaluation
    from vsr.jobs import run_batch
    from vsr.loading import load_model
    from vsr.stream import run_stream
    from vsr.upscale import UpscaleConfig, upscale_file

    assert vsr.upscale_file is upscale_file and vsr.UpscaleConfig is UpscaleConfig
    assert vsr.load_model is load_model and vsr.run_batch is run_batch
    assert vsr.run_stream is run_stream and vsr.EvalConfig is EvalConfig
    assert vsr.run_evaluation is run_evaluation
    import vsr.evaluate as ev  # the submodule stays importable under its own name

    assert ev.EvalConfig is EvalConfig
    with pytest.raises(AttributeError):
        vsr.no_such_entry  # noqa: B018


def test_load_model_and_infer() -> None:
    import torch

    import vsr

    handle = vsr.load_model("bicubic", scale=2, device="cpu", precision="fp32")
    y = handle.infer(torch.rand(1, 3, 8, 12))
    assert y.shape == (1, 3, 16, 24) and y.dtype == torch.float32
    with pytest.raises(vsr.ConfigError):
        vsr.load_model("bicubic", scale=2, device="cpu", precision="fp8")


def _fresh_python(code: str) -> list[str]:
    """The words ``code`` prints in a new interpreter whose environment sets no
    OMP_WAIT_POLICY."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120, env=env).stdout.split()


def test_configure_runtime_before_torch() -> None:
    out = _fresh_python("import os, sys, vsr; s = vsr.configure_runtime(threads=1); "
                        "import torch; print(s.omp_wait_policy, s.omp_effective, s.threads, "
                        "torch.get_num_threads())")
    assert out == ["PASSIVE", "True", "1", "1"]
    import vsr

    with pytest.raises(vsr.ConfigError):
        vsr.configure_runtime(threads=0)


def test_configure_runtime_after_torch_says_so_on_every_call() -> None:
    out = _fresh_python("import torch, vsr; a = vsr.configure_runtime(keep_freed_memory=False);"
                        " b = vsr.configure_runtime(keep_freed_memory=False); "
                        "print(a.omp_effective, b.omp_effective, b.omp_wait_policy)")
    assert out == ["False", "False", "PASSIVE"]
