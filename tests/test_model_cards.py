"""Model cards: one JSON file next to each shipped weights file, read by the registry and shown
by `vsr models`."""

import json

import pytest
from click.testing import CliRunner
from conftest import SHARED

from vsr.errors import ModelError
from vsr.models import REGISTRY
from vsr.models.registry import CARD_KEYS, CARD_SETS, WEIGHTS_DIR, load_card

PRETRAINED = [spec for spec in REGISTRY if spec.pretrained]


def test_every_shipped_weights_file_has_a_card_and_every_card_a_model():
    weights = {p.name.removesuffix(".safetensors") for p in WEIGHTS_DIR.glob("*.safetensors")}
    cards = {p.stem for p in WEIGHTS_DIR.glob("*.json")}
    assert weights and weights == cards
    assert {spec.name for spec in PRETRAINED} == weights


@pytest.mark.parametrize("spec", PRETRAINED, ids=lambda s: s.name)
def test_card_has_the_required_keys_and_feeds_the_spec(spec):
    on_disk = json.loads((WEIGHTS_DIR / f"{spec.name}.json").read_text(encoding="utf-8"))
    assert set(CARD_KEYS) <= set(on_disk)
    for name in CARD_SETS:
        q = on_disk["eval"][name]
        assert 20 < q["psnr"] < 45 and 0.5 < q["ssim"] < 1
    assert on_disk["cpu_speed"]["s_per_frame_720p_out_1_thread"] > 0
    assert on_disk["cpu_speed"]["commands"]
    assert dict(spec.card) == on_disk
    assert spec.license == on_disk["license"] and spec.provenance == on_disk["provenance"]


@pytest.mark.parametrize("spec", PRETRAINED, ids=lambda s: s.name)
def test_shipped_weights_score_their_cards_set5(spec):
    """The shipped network, run as vsr runs it, still scores the card's Set5 PSNR: any change
    to the forward pass (the fused RCAB gate, the split last tail, folded upsamplers) that is
    not exact shows up here."""
    folder = SHARED / "benchmark" / "Set5"
    if not folder.is_dir():
        pytest.skip("shared data not present")
    from vsr.evaluate import evaluate_dataset
    from vsr.loading import load_model

    handle = load_model(spec.name, device="cpu", precision="fp32")  # the cards' precision
    result = evaluate_dataset(handle, folder, spec.scale)
    assert result.psnr == pytest.approx(spec.card["eval"]["Set5"]["psnr"], abs=0.006)


def test_a_card_without_a_required_key_is_refused(tmp_path):
    card = json.loads((WEIGHTS_DIR / f"{PRETRAINED[0].name}.json").read_text(encoding="utf-8"))
    del card["license"]
    del card["eval"]["B100"]
    (tmp_path / "m.json").write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(ModelError, match="lacks license, eval.B100"):
        load_card("m", tmp_path)
    (tmp_path / "bad.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ModelError, match="not a JSON object"):
        load_card("bad", tmp_path)
    with pytest.raises(ModelError, match="unreadable"):
        load_card("absent", tmp_path)


def test_vsr_models_shows_the_cards():
    from vsr.cli.models import models

    r = CliRunner().invoke(models, ["--json"])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.stdout)["models"]}
    for spec in PRETRAINED:
        card = rows[spec.name]["card"]
        assert rows[spec.name]["pretrained"] is True
        assert card == json.loads((WEIGHTS_DIR / f"{spec.name}.json").read_text(encoding="utf-8"))
    table = CliRunner().invoke(models, [])
    assert table.exit_code == 0, table.output
    line = next(x for x in table.stdout.splitlines() if x.startswith("drn-t-x2-drc50 "))
    q = rows["drn-t-x2-drc50"]["card"]["eval"]
    assert f"{q['Set5']['psnr']:.2f}/{q['Set14']['psnr']:.2f}/{q['B100']['psnr']:.2f}" in line
    # columns line up whatever the longest name: every row's scale sits under the header's
    lines = table.stdout.splitlines()
    end = lines[0].index("scale") + len("scale")
    assert all(x[end - 1].isdigit() and x[end] == " " for x in lines[1:]), table.stdout


def test_a_broken_model_card_makes_only_its_model_unusable(tmp_path):
    """A model card that cannot be read (here: cut short) stopped the registry from loading:
    every command that touches a model failed, `vsr models` and `--model bicubic` included,
    with "model card of 'drn-t-x4' unreadable". Now only drn-t-x4 is refused, with that
    reason; the listing says "bad card" and warns once on stderr. A copy of the package in
    tmp_path, run in real processes, so the shipped cards stay untouched."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from conftest import make_clip

    import vsr
    import vsr.cli
    import vsr.models

    pkg = tmp_path / "pkg" / "vsr"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(Path(vsr.__file__).parent, pkg, ignore=skip)
    shutil.copytree(Path(vsr.cli.__file__).parent, pkg / "cli", ignore=skip)
    shutil.copytree(Path(vsr.models.__file__).parent, pkg / "models", ignore=skip)
    (pkg / "models" / "weights" / "drn-t-x4.json").write_text('{"data": "cut sh')
    env = {**os.environ, "PYTHONPATH": str(pkg.parent), "OMP_NUM_THREADS": "1"}
    where = subprocess.run([sys.executable, "-c", "import vsr.models; print(vsr.models.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert where.stdout.strip() == str(pkg / "models" / "__init__.py"), where

    def run(*args):
        return subprocess.run([sys.executable, "-m", "vsr", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)  # not the checkout's

    listing = run("models", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = {r["name"]: r for r in json.loads(listing.stdout)["models"]}
    assert rows["drn-t-x4"]["pretrained"] is False and rows["drn-t-x2"]["pretrained"] is True
    [warning] = listing.stderr.strip().splitlines()
    assert warning.startswith("Warning: model card of 'drn-t-x4' unreadable"), warning
    table = run("models")
    assert table.returncode == 0, table.stderr
    [row] = [ln for ln in table.stdout.splitlines() if ln.startswith("drn-t-x4 ")]
    assert "bad card" in row

    clip = make_clip(tmp_path / "in.mp4", frames=2, size=(32, 24))
    ok = run("upscale", str(clip), str(tmp_path / "ok.mp4"), "--model", "drn-t-x2",
             "--device", "cpu", "--no-progress")
    assert ok.returncode == 0 and (tmp_path / "ok.mp4").is_file(), ok.stderr
    refused = run("upscale", str(clip), str(tmp_path / "x4.mp4"), "--model", "drn-t-x4",
                  "--device", "cpu", "--no-progress")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and len(lines) == 1, refused.stderr
    assert lines[0].startswith("Error: model card of 'drn-t-x4' unreadable"), lines
    assert not (tmp_path / "x4.mp4").exists()
