"""Registry, architectures, handles: every model's shapes, counts, dtypes and contracts."""

from __future__ import annotations

import pytest
import torch

from vsr.errors import ModelError
from vsr.models import (
    DEFAULT_MODEL,
    DRN,
    REGISTRY,
    DualNetworks,
    ModelSpec,
    NetworkUpscaler,
    Registry,
    count_params,
    create_model,
    describe_registry,
    load_model,
    macs_96,
)

PAPER_PARAMS = {
    "drn-s-x4": 4_804_041,
    "drn-l-x4": 9_825_869,
    "drn-s-x8": 5_402_976,
    "drn-l-x8": 10_003_994,
}


def _meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return REGISTRY.get(name).build()


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_paper_parameter_counts(name: str) -> None:
    assert count_params(_meta(name)) == PAPER_PARAMS[name]


def test_paper_mult_adds() -> None:
    # paper: DRN-S x4 109.9G, DRN-L x4 224.8G at a 96x96 LR input
    assert round(macs_96(_meta("drn-s-x4")) / 1e9, 1) == 109.9
    assert round(macs_96(_meta("drn-l-x4")) / 1e9, 1) == 224.8


def test_registry_has_the_six_paper_names_and_a_default() -> None:
    names = set(REGISTRY.names())
    assert {"drn-s-x2", "drn-s-x4", "drn-s-x8", "drn-l-x2", "drn-l-x4", "drn-l-x8"} <= names
    assert DEFAULT_MODEL in names
    rows = describe_registry()
    assert sum(r["default"] for r in rows) == 1
    for r in rows:
        assert {"name", "scale", "params", "macs_96", "pretrained", "default"} <= set(r)


@pytest.mark.parametrize("name", REGISTRY.names())
def test_every_registry_model_multiscale_shapes(name: str) -> None:
    spec = REGISTRY.get(name)
    torch.manual_seed(0)
    net = create_model(name, pretrained=False).eval()
    x = torch.rand(1, 3, 6, 10)
    with torch.inference_mode():
        outs = net(x)
        last = net(x, return_all=False)
    assert len(outs) == net.phase + 1
    for k, o in enumerate(outs):
        f = 2**k
        assert o.shape == (1, 3, 6 * f, 10 * f)
    assert outs[-1].shape == (1, 3, 6 * spec.scale, 10 * spec.scale)
    torch.testing.assert_close(last, outs[-1])


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_dual_model_shapes(scale: int) -> None:
    phase = {2: 1, 4: 2, 8: 3}[scale]
    duals = DualNetworks(phase=phase, width=8)
    for i, d in enumerate(duals):
        side = 4 * 2 ** (i + 1)
        y = d(torch.rand(2, 3, side, side + 2))
        assert y.shape == (2, 3, side // 2, (side + 2) // 2)


def test_pruned_widths_are_constructor_arguments() -> None:
    net = DRN(scale=4, n_feats=8, n_blocks=[2, 1], down_widths=[4, 12],
              rcab_widths=[[8, 20], [12]], up_widths=[16, 8])
    assert net.up[0].blocks[1].conv1.out_channels == 20
    assert net.down[1].conv1.out_channels == 12
    assert net.up[1].upconv.out_channels == 4 * 8
    assert net(torch.rand(1, 3, 5, 7), return_all=False).shape == (1, 3, 20, 28)
    rebuilt = DRN(**net.hparams)
    assert count_params(rebuilt) == count_params(net)


def test_bad_scale_and_inconsistent_widths_raise() -> None:
    with pytest.raises(ValueError):
        DRN(scale=3)
    with pytest.raises(ValueError):
        DRN(scale=4, n_feats=8, n_blocks=[1], up_widths=[8])


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ModelError, match="drn-s-x4"):
        REGISTRY.get("no-such-model")
    with pytest.raises(ModelError, match="known models"):
        load_model("no-such-model")


@pytest.mark.parametrize("typed, meant", [("drn-t-x2-drc5", "drn-t-x2-drc50"),
                                           ("DRN-T-X4", "drn-t-x4"), ("bicubik", "bicubic")])
def test_a_near_miss_name_suggests_the_model_meant(typed: str, meant: str) -> None:
    """`--model drn-t-x2-drc5` listed all ten names and left the reader to find the one."""
    with pytest.raises(ModelError) as got:
        REGISTRY.get(typed)
    assert f"unknown model '{typed}' (did you mean '{meant}'?); known models" in str(got.value)
    with pytest.raises(ModelError) as got:
        REGISTRY.get("no-such-model")
    assert "did you mean" not in str(got.value)


def test_shipped_weights_that_fail_their_sha256_are_not_pretrained(tmp_path) -> None:
    """`vsr models` said "yes" (and --json "pretrained": true) for a damaged weights file
    that every run then refused as corrupt."""
    import hashlib

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"the shipped bytes")
    good = hashlib.sha256(b"the shipped bytes").hexdigest()

    def spec(sha256: str | None) -> ModelSpec:  # an absolute name: WEIGHTS_DIR / it is it
        return ModelSpec(name="w", arch="drn", kwargs={"scale": 2, "n_feats": 4, "n_blocks": 1},
                         scale=2, description="x", weights=str(weights), sha256=sha256)

    assert spec(good).pretrained and spec(good).weights_problem() is None
    weights.write_bytes(b"the shipped bytes, damaged")
    assert not spec(good).pretrained and spec(good).weights_problem() == "corrupt"
    assert spec(None).pretrained  # nothing recorded to check against
    weights.unlink()
    assert spec(good).weights_problem() == "missing"


def test_duplicate_registration_raises() -> None:
    reg = Registry()
    spec = ModelSpec(name="a", arch="drn", kwargs={"scale": 2, "n_feats": 4, "n_blocks": 1},
                     scale=2, description="x")
    reg.register(spec)
    with pytest.raises(ValueError, match="already registered"):
        reg.register(spec)


def test_create_model_drops_none_overrides() -> None:
    net = create_model("drn-t-x2", pretrained=False, n_feats=None, n_blocks=[2])
    assert net.hparams["n_feats"] == REGISTRY.get("drn-t-x2").kwargs["n_feats"]
    assert net.hparams["n_blocks"] == [2]


def _tiny_handle() -> NetworkUpscaler:
    torch.manual_seed(0)
    return NetworkUpscaler("tiny", DRN(scale=2, n_feats=4, n_blocks=1))


def test_handle_uint8_and_float_paths_agree() -> None:
    h = _tiny_handle()
    x8 = torch.randint(0, 256, (2, 3, 9, 7), dtype=torch.uint8)
    y8 = h.upscale(x8)
    assert y8.dtype == torch.uint8 and y8.shape == (2, 3, 18, 14)
    yf = h.upscale(x8.float() / 255)
    assert yf.dtype == torch.float32 and yf.min() >= 0 and yf.max() <= 1
    assert (y8.int() - (yf * 255).round().int()).abs().max() <= 1


@pytest.mark.parametrize("bad", [torch.zeros(3, 8, 8), torch.zeros(1, 4, 8, 8),
                                 torch.zeros(1, 3, 8, 8, dtype=torch.int32),
                                 torch.zeros(0, 3, 8, 8)])
def test_handle_rejects_bad_input(bad: torch.Tensor) -> None:
    with pytest.raises(ModelError):
        _tiny_handle().upscale(bad)


def test_handle_pads_to_size_multiple_and_crops_back() -> None:
    h = _tiny_handle()
    x = torch.rand(1, 3, 7, 5)
    ref = h.infer(x)
    h.size_multiple = 4  # a network that needs multiples of 4: padded, then cropped back
    y = h.infer(x)
    assert y.shape == ref.shape == (1, 3, 14, 10)


def test_handle_dtype_support() -> None:
    h = _tiny_handle()
    assert torch.float16 in h.supported_dtypes and torch.bfloat16 in h.supported_dtypes
    with pytest.raises(ModelError, match="does not support"):
        h.to(dtype=torch.float64)
    h.to(dtype=torch.bfloat16)
    y = h.upscale(torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8))
    assert y.dtype == torch.uint8


def test_a_handle_in_another_dtype_leaves_the_first_and_holds_the_fp32_weights_once() -> None:
    """with_dtype (what a shared handle's fp32 fallback and the model cache's other precisions
    are made with) gives a new handle and leaves the first as it was; from bf16 back to fp32 it
    computes with the weights as they were before the rounding, and on the CPU with those very
    tensors: the fp32 weights are held once, not once per handle."""
    torch.manual_seed(0)
    fp32 = _tiny_handle()
    weights = {k: v.clone() for k, v in fp32.module.state_dict().items()}
    bf16 = fp32.with_dtype(torch.bfloat16)
    again = bf16.with_dtype(torch.float32)
    assert (fp32.dtype, bf16.dtype, again.dtype) == (torch.float32, torch.bfloat16,
                                                     torch.float32)
    assert fp32.with_dtype(torch.float32) is fp32
    assert all(torch.equal(fp32.module.state_dict()[k], v) for k, v in weights.items())
    x = torch.rand(1, 3, 9, 7)
    assert torch.equal(again.infer(x), fp32.infer(x))
    assert torch.equal(bf16.infer(x.bfloat16()),
                       _tiny_handle_like(fp32).to(dtype=torch.bfloat16).infer(x.bfloat16()))
    held = {t.data_ptr() for t in fp32.module.state_dict().values()}
    assert {t.data_ptr() for t in again.module.state_dict().values()} == held
    with pytest.raises(ModelError, match="does not support"):
        fp32.with_dtype(torch.float64)


def _tiny_handle_like(handle: NetworkUpscaler) -> NetworkUpscaler:
    """A handle of its own with ``handle``'s network and weights (a deep copy)."""
    import copy

    return NetworkUpscaler("tiny", copy.deepcopy(handle.module))


def test_bicubic_handle_needs_scale() -> None:
    with pytest.raises(ModelError, match="scale"):
        load_model("bicubic")
    h = load_model("bicubic", scale=3)
    x = torch.full((1, 3, 4, 4), 100, dtype=torch.uint8)
    assert torch.equal(h.upscale(x), torch.full((1, 3, 12, 12), 100, dtype=torch.uint8))


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 5), (1, 17), (8, 8)])
def test_a_tiny_picture_keeps_its_colour(size: tuple[int, int]) -> None:
    """Under 16 pixels a side the network sees the picture centred in 16 (edges repeated): the
    convolutions' zero padding turned a 1x1 (10, 200, 30) into (50, 134, 52)."""
    from vsr.loading import load_model

    handle = load_model("drn-t-x2-drc50", device="cpu", precision="fp32")
    colour = torch.tensor([10, 200, 30], dtype=torch.uint8).view(1, 3, 1, 1)
    y = handle.upscale(colour.expand(1, 3, *size).contiguous())
    assert tuple(y.shape) == (1, 3, 2 * size[0], 2 * size[1])
    assert (y.float().mean((0, 2, 3)) - colour.flatten().float()).abs().max() <= 1.5


def test_a_backend_pads_a_tiny_picture_as_the_handle_does() -> None:
    pytest.importorskip("onnxruntime")
    from vsr.backends import prepare_for_frame
    from vsr.loading import load_model

    handle = load_model("drn-t-x2-drc50", device="cpu", precision="fp32")
    image = torch.randint(0, 256, (3, 5, 3), dtype=torch.uint8, generator=torch.Generator()
                          .manual_seed(0))
    runner = prepare_for_frame(handle, "onnx", image)
    assert runner.backend == "onnx"
    # the shape a fixed-shape engine (compile, tensorrt) is built for is the one run_padded feeds
    from vsr.backends.base import padded_shape

    assert padded_shape(handle, (1, 3, 3, 5)) == (1, 3, 16, 16)
    assert padded_shape(handle, (2, 3, 17, 40)) == (2, 3, 17, 40)
    x = image.permute(2, 0, 1)[None].float() / 255
    assert torch.allclose(runner(x), handle.infer(x), atol=1e-4)
