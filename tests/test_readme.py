"""The README is a user guide: its first commands, its size, and its Python quick start, which
is run as written against a small synthetic clip."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import av
from conftest import make_clip

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"


def _sections() -> dict[str, str]:
    """``## Heading`` -> the text under it, up to the next ``## `` heading."""
    parts = re.split(r"^## (.+)$", README.read_text(encoding="utf-8"), flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def python_quick_start() -> str:
    """The first ```python block under the README's "## Python" heading."""
    body = _sections()["Python"]
    match = re.search(r"^```python\n(.*?)^```$", body, flags=re.M | re.S)
    assert match, 'no ```python block under "## Python"'
    return match.group(1)


def test_readme_starts_with_install_main_job_and_tests_and_stays_short():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 200
    first = re.search(r"^```bash\n(.*?)^```$", text, flags=re.M | re.S).group(1).splitlines()
    assert first[0].startswith('pip install torch==2.13.0 -e ".[dev,onnx,cluster]"')
    assert first[1].startswith("vsr upscale ")
    assert first[2].startswith("ruff check . && python -m pytest -q")
    # Only the contributors' section may point at the repository's neighbours.
    for title, body in _sections().items():
        if title != "For contributors":
            assert "../shared" not in body and "shared/data" not in body, title


def test_python_quick_start_runs_as_written(tmp_path):
    code = python_quick_start()
    names = set(re.findall(r'input="([^"]+)"', code))
    assert names == {"in.mp4"}, names
    make_clip(tmp_path / "in.mp4", frames=5, size=(64, 48), audio_tracks=1)
    (tmp_path / "quick_start.py").write_text(code, encoding="utf-8")
    r = subprocess.run([sys.executable, "quick_start.py"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0].split()[:2] == ["5", "5"], r.stdout  # frames_in, frames_out
    assert out[-1] == "(2, 3, 96, 128)", r.stdout
    with av.open(str(tmp_path / "out.mp4")) as c:
        frames = list(c.decode(video=0))
        assert len(c.streams.audio) == 1
    assert len(frames) == 5 and (frames[0].width, frames[0].height) == (128, 96)


def test_every_test_the_docs_cite_exists():
    cited = 0
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for path, name in re.findall(r"(tests/\w+\.py)::(\w+)", page.read_text(encoding="utf-8")):
            cited += 1
            source = (ROOT / path).read_text(encoding="utf-8") if (ROOT / path).is_file() else ""
            assert re.search(rf"^def {name}\(", source, flags=re.M), f"{page.name}: {path}::{name}"
    assert cited >= 10


def test_method_sections_cited_in_code_exist():
    headings = re.findall(r"^#{2,3} (\d[a-c]?)\. ", (ROOT / "docs" / "method.md").read_text(
        encoding="utf-8"), flags=re.M)
    assert {"1", "2", "3", "3a", "4", "4a", "4b", "4c", "5", "6"} <= set(headings)
    for folder in ("vsr", "cli", "models"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            for cite in re.findall(r"docs/method\.md,? (?:sections? )?([\d][a-c]?(?:-\d)?)", text):
                for part in cite.split("-"):
                    assert part in headings, f"{path.relative_to(ROOT)} cites section {part}"
