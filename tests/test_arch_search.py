"""benchmarks/arch_search.py: grid parsing, the report table, and weight surgery by growth."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from vsr.errors import ConfigError
from vsr.models import DRN

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "arch_search.py"


@pytest.fixture(scope="module")
def arch():
    spec = importlib.util.spec_from_file_location("vsr_bench_arch_search", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_grid_is_the_product_of_its_axes_last_fastest(arch):
    points = arch.parse_grid("scale=4 n_feats=8,12 up_widths=-,-:8")
    assert points == [
        {"scale": 4, "n_feats": 8, "up_widths": None},
        {"scale": 4, "n_feats": 8, "up_widths": [None, 8]},
        {"scale": 4, "n_feats": 12, "up_widths": None},
        {"scale": 4, "n_feats": 12, "up_widths": [None, 8]},
    ]


def test_resolve_fills_the_constructor_defaults_per_stage(arch):
    kw = arch.resolve({"scale": 4, "n_feats": 8, "n_blocks": [12, 0], "up_widths": [None, 8]})
    assert kw == {"scale": 4, "n_feats": 8, "n_blocks": [12, 0], "up_widths": [32, 8],
                  "down_widths": [8, 16]}
    # the defaults are DRN's own: building with and without them gives the same network
    explicit = DRN(**kw).hparams
    implicit = DRN(scale=4, n_feats=8, n_blocks=[12, 0], up_widths=[32, 8]).hparams
    assert explicit == implicit
    assert arch.config_name(kw) == "x4-nf8-b12.0-up32.8-dn8.16"
    assert arch.resolve({"scale": 2, "n_feats": 16, "n_blocks": [6]})["up_widths"] == [32]


@pytest.mark.parametrize("spec, message", [
    ("n_feats=8", "no scale axis"),
    ("scale=4 depth=3", "unknown grid axis 'depth'"),
    ("scale=4 scale=2", "given twice"),
    ("scale=4 n_feats=8,,12", "empty value"),
    ("scale=4 n_feats=x", "not a non-negative integer"),
    ("scale=4 n_feats=-", "needs a value"),
    ("scale=4 n_blocks", "expected NAME=V1"),
])
def test_bad_grids_raise_config_errors(arch, spec, message):
    with pytest.raises(ConfigError, match=message):
        arch.parse_grid(spec)


def test_stage_count_and_scale_are_checked(arch):
    with pytest.raises(ConfigError, match="one entry per stage"):
        arch.resolve({"scale": 4, "n_feats": 8, "n_blocks": [8]})
    with pytest.raises(ConfigError, match="power of two"):
        arch.resolve({"scale": 3, "n_feats": 8})


def test_grid_configs_drop_repeated_points(arch):
    configs = arch.grid_configs(["scale=4 n_feats=8 up_widths=-,32:32",
                                 "scale=4 n_feats=8 up_widths=-:8"])
    assert [name for name, _ in configs] == ["x4-nf8-b30.30-up32.32-dn8.16",
                                             "x4-nf8-b30.30-up32.8-dn8.16"]


def test_table_sorts_each_scale_fastest_first_with_ratios_to_span(arch):
    rows = [
        {"name": "a-x4", "kind": "grid", "scale": 4, "params": 1500, "macs_720p": 2e9,
         "seconds_720p": 0.6, "fastest_seconds_720p": 0.5, "cpu_seconds_720p": 0.55},
        {"name": "span-x4-ch48", "kind": "peer", "scale": 4, "seconds_720p": 0.4,
         "fastest_seconds_720p": 0.39, "cpu_seconds_720p": 0.41},
        {"name": "x2-a", "kind": "grid", "scale": 2, "params": 900, "macs_720p": 1e9,
         "seconds_720p": 0.3, "fastest_seconds_720p": 0.3, "cpu_seconds_720p": 0.3},
    ]
    arch.add_ratios(rows)
    assert rows[0]["ratio_to_span"] == pytest.approx(1.5)
    assert rows[2]["ratio_to_span"] is None  # no SPAN x2 in this run
    rows[0]["quality"] = {"Set5": 31.234}
    report = {"date": "2026-11-30 12:00", "command": "python benchmarks/arch_search.py time",
              "threads": 1, "repeats": 3, "rows": rows, "load_average": [1.0, 2.0]}
    text = arch.table(report)
    lines = text.splitlines()
    assert "python benchmarks/arch_search.py time" in lines
    x4 = lines.index("x4:")
    assert lines[x4 + 2].startswith("| config | kind | params | GMACs | s / 720p | fastest | "
                                    "CPU s | ratio to SPAN | Set5 |")
    assert lines[x4 + 4] == "| `span-x4-ch48` | peer | - | - | 0.400 | 0.390 | 0.410 | 1.00 | - |"
    assert lines[x4 + 5] == "| `a-x4` | grid | 1.5 k | 2.0 | 0.600 | 0.500 | 0.550 | 1.50 | 31.23 |"
    assert lines.index("x2:") < x4  # scales in order


def test_grown_network_computes_what_the_source_did(arch):
    torch.manual_seed(1)
    source = DRN(scale=4, n_feats=4, n_blocks=[1, 1], up_widths=[16, 4]).eval()
    with torch.no_grad():
        for p in source.parameters():  # trained-looking weights: every block does something
            p.add_(0.05 * torch.randn_like(p))
    grown = arch.grow(source, [3, 2])
    assert grown.hparams["n_blocks"] == [3, 2]
    assert grown.hparams["up_widths"] == [16, 4]
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        assert torch.equal(grown(x, return_all=False), source(x, return_all=False))
        # the new blocks are trainable identities: conv1 random, conv2 zero
        new = grown.up[0].blocks[2]
        assert new.conv1.weight.abs().sum() > 0 and new.conv2.weight.abs().sum() == 0
        # the trained blocks came across unchanged
        assert torch.equal(grown.up[0].blocks[0].conv1.weight, source.up[0].blocks[0].conv1.weight)


def test_growth_never_removes_blocks(arch):
    source = DRN(scale=2, n_feats=4, n_blocks=[2])
    with pytest.raises(ConfigError, match="growing only adds blocks"):
        arch.grow(source, [1])
    with pytest.raises(ConfigError, match="one entry per stage"):
        arch.grow(source, [2, 2])


def test_folding_the_projection_into_the_upconv_keeps_the_function(arch):
    torch.manual_seed(2)
    source = DRN(scale=4, n_feats=4, n_blocks=[1, 0]).eval()  # up widths 16, 16; proj to 8, 4
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.05 * torch.randn_like(p))
    grown = arch.grow(source, [2, 0], [8, 4])
    assert grown.hparams["up_widths"] == [8, 4]
    assert grown.up[1].upconv.out_channels == 16 and grown.up[1].proj.in_channels == 4
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        a, b = grown(x, return_all=True), source(x, return_all=True)
    for y, z in zip(a, b, strict=True):
        torch.testing.assert_close(y, z, rtol=0, atol=2e-6)
    with pytest.raises(ConfigError, match="neither the trained 16 nor the projection's 4"):
        arch.grow(source, [1, 0], [16, 6])
