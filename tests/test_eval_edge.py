"""`vsr eval` at its edges: configs refused when built, before any clip is read."""

from __future__ import annotations

import pytest

from vsr.errors import ConfigError
from vsr.video_eval import VideoEvalConfig


@pytest.mark.parametrize("scale", [17, 100000])
def test_a_video_eval_scale_over_the_maximum_is_refused_when_the_config_is_built(tmp_path,
                                                                                  scale):
    """VideoEvalConfig took scale=17 (EvalConfig and every other config refuse it) and only
    load_model refused it later, after the clips were checked."""
    with pytest.raises(ConfigError, match="scale must be at most 16"):
        VideoEvalConfig(videos=(tmp_path / "missing.mp4",), model="bicubic", scale=scale)


@pytest.mark.parametrize("option", ["--data", "--video"])
def test_an_empty_data_or_video_is_named_not_taken_for_the_current_folder(
        tmp_path, monkeypatch, cli_error, option):
    """`vsr eval -d "$SET"` with SET unset scored the images of the current folder (click's
    Path('') is '.') and printed a table for them; `--video ''` said 'clip not found: .'."""
    import shutil

    from conftest import SHARED

    image = SHARED / "benchmark" / "Set5" / "HR" / "baby.png"
    if not image.is_file():
        pytest.skip("shared data not present")
    shutil.copy(image, tmp_path / "baby.png")  # what a run in this folder would score
    monkeypatch.chdir(tmp_path)
    line = cli_error("eval", option, "", "--baseline", "bicubic", "--scale", "2")
    assert line == f"Error: {option.removeprefix('--').replace('video', 'videos')} must be " \
                   "a path, not ''"
