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
