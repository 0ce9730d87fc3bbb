"""benchmarks/peers.py's reports: the README table it writes (no peer packages needed)."""

from __future__ import annotations


def _row(name: str, kind: str, scale: int, psnr: float, secs: float, ratio: float) -> dict:
    return {"name": name, "kind": kind, "scale": scale, "seconds_720p": secs,
            "ratio_to_span": ratio, "quality": {"Set5": {"psnr": psnr}}}


REPORT = {"datasets": ["Set5"], "date": "2026-11-30 11:49", "threads": 2, "rows": [
    _row("span-x2-ch48", "peer", 2, 38.0, 1.25, 1.0),
    _row("fsrcnn-x2", "peer", 2, 34.82, 0.18, 0.13),
    _row("bicubic-x2", "baseline", 2, 33.65, 0.01, 0.01),
    _row("drn-t-x2-drc50", "ours", 2, 36.97, 0.47, 0.37),
]}


def test_readme_table_keeps_ours_span_and_bicubic_and_regenerates_in_place(peers, tmp_path):
    text = peers.readme_markdown(REPORT)
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert [r.split(" | ")[0] for r in rows] == [
        "| drn-t-x2-drc50", "| span-x2-ch48 (peer)", "| bicubic-x2 (baseline)"]
    assert "| 36.97 | 0.47 | 0.37 |" in rows[0] and "fsrcnn" not in text
    readme = tmp_path / "README.md"
    readme.write_text("intro\n\n<!-- peers:readme -->\nold\n<!-- /peers:readme -->\n\nafter\n")
    for _ in range(2):  # twice: the second run replaces the first, nothing else moves
        peers.write_section(readme, "readme", text)
        got = readme.read_text()
        assert got == ("intro\n\n<!-- peers:readme -->\n" + text.rstrip()
                       + "\n<!-- /peers:readme -->\n\nafter\n")


def test_readme_table_shows_ours_in_the_precision_upscale_runs(peers):
    """Where the report has NAME@bf16 (auto runs bf16 on that CPU) the README shows that row
    in place of the fp32 one, and says so; the full table keeps both."""
    from copy import deepcopy

    report = deepcopy(REPORT)
    report["rows"].append(_row("drn-t-x2-drc50@bf16", "ours", 2, 36.95, 0.29, 0.23))
    text = peers.readme_markdown(report)
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert [r.split(" | ")[0] for r in rows] == [
        "| drn-t-x2-drc50@bf16", "| span-x2-ch48 (peer)", "| bicubic-x2 (baseline)"]
    assert "| 36.95 | 0.29 | 0.23 |" in rows[0] and "as `--precision auto` runs them" in text
    assert "@bf16" not in peers.readme_markdown(REPORT)


def test_reused_quality_rows_are_kept_and_the_others_measured(peers):
    """--reuse-quality takes the rows the old report has on every dataset, untouched, and
    leaves the others (a new model, a dropped stale row, a missing dataset) to be measured,
    instead of refusing to run."""
    def row(name, datasets):
        return {"name": name, "scale": 2, "kind": "ours", "source": name, "extra": 1,
                "quality": {d: {"psnr": 30.0} for d in datasets}}

    entries = [peers.Entry(n, 2, "ours", lambda: None) for n in ("a", "b", "c")]
    reuse = {"rows": [row("a", ["Set5", "B100"]), row("b", ["Set5"]), row("z", ["Set5"])]}
    kept, fresh = peers.split_reused(entries, ["Set5", "B100"], reuse)
    assert list(kept) == ["a"] and "extra" not in kept["a"]
    assert kept["a"]["quality"] == reuse["rows"][0]["quality"]
    assert fresh == ["b", "c"]
    assert peers.split_reused(entries, ["Set5"], None) == ({}, ["a", "b", "c"])
