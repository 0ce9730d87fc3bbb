"""DRC building blocks: candidate widths, masks, pruning bookkeeping, physical removal."""

from __future__ import annotations

import copy

import pytest
import torch

from vsr.compress import (
    ChannelMasks,
    candidate_widths,
    dr_prune,
    hard_mask,
    hparams_with_widths,
    l1_prune,
    layer_widths,
    prunable_layers,
    run_search,
    slim_network,
    soft_mask,
)
from vsr.compress.layers import l1_rank, round_width
from vsr.errors import ConfigError
from vsr.models import DRN, DualNetworks
from vsr.train.data import lr_pyramid

torch.set_num_threads(1)


def _net(scale: int = 2, seed: int = 0, **kw) -> DRN:
    torch.manual_seed(seed)
    args = {"scale": scale, "n_feats": 4, "n_blocks": [2] if scale == 2 else [1, 1]}
    args.update(kw)
    return DRN(**args).eval()


def _pyramid(scale: int, n: int = 2, size: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return lr_pyramid(torch.rand(n, 3, size * scale, size * scale, generator=g), scale)


def _masked(model: DRN, kept: list[list[int]]) -> ChannelMasks:
    layers = prunable_layers(model)
    masks = ChannelMasks(layers)
    for i, (layer, k) in enumerate(zip(layers, kept, strict=True)):
        m = torch.zeros(layer.width)
        m[k] = 1.0
        masks.masks[i] = m
    return masks


def test_candidate_widths_follow_the_paper_rule() -> None:
    assert set(candidate_widths(64, 0.3)) == {20, 24, 32, 36, 40, 44}
    assert candidate_widths(64, 0.3) == [20, 24, 32, 36, 40, 44]
    assert candidate_widths(64, 0.5) == [16, 20, 20, 24, 28, 32]
    assert max(candidate_widths(32, 0.5)) == 16
    assert min(candidate_widths(8, 0.9)) == 4  # clamped to at least 4
    assert max(candidate_widths(4, 0.0)) == 4  # and at most c
    assert [round_width(x, 64) for x in (22.9, 26, 31, 2, 100)] == [20, 24, 32, 4, 64]
    with pytest.raises(ConfigError):
        candidate_widths(64, 1.0)


def test_compressible_layers_of_the_paper_models() -> None:
    with torch.device("meta"):
        assert len(prunable_layers(DRN(scale=4, n_feats=16, n_blocks=30))) == 64
        assert len(prunable_layers(DRN(scale=8, n_feats=8, n_blocks=30))) == 96
        assert len(prunable_layers(DRN(scale=2, n_feats=32, n_blocks=30))) == 32


def test_hparams_with_widths_round_trip() -> None:
    net = _net(4)
    widths = layer_widths(net)
    assert hparams_with_widths(net.hparams, widths) == net.hparams
    new = [w - 1 for w in widths]
    assert layer_widths(DRN(**hparams_with_widths(net.hparams, new))) == new
    with pytest.raises(ConfigError):
        hparams_with_widths(net.hparams, widths[:-1])


def test_soft_mask_equals_hard_mask_for_one_hot_alpha() -> None:
    net = _net(4)
    cands = [4, 8, 12, 16]
    rank = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    for k, width in enumerate(cands):
        alpha = torch.full((len(cands),), float("-inf"))
        alpha[k] = 0.0
        assert torch.equal(soft_mask(alpha, cands, rank), hard_mask(width, rank))
    # a uniform alpha gives the best channel weight 1 and the worst the share of the widest
    soft = soft_mask(torch.zeros(4), cands, rank)
    assert soft[rank[0]] == 1.0 and soft[rank[-1]] == pytest.approx(0.25)
    # and on a network: soft (one-hot) masked outputs == hard masked outputs
    layers = prunable_layers(net)
    x = _pyramid(4)[0]
    outs = []
    for soft_mode in (True, False):
        with ChannelMasks(layers) as masks:
            for i, layer in enumerate(layers):
                cand = candidate_widths(layer.width, 0.5)
                alpha = torch.full((len(cand),), float("-inf"))
                alpha[2] = 0.0
                masks.masks[i] = (soft_mask(alpha, cand, l1_rank(layer)) if soft_mode
                                  else hard_mask(cand[2], l1_rank(layer)))
            outs.append(net(x)[-1])
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("scale", [2, 4])
def test_keeping_every_channel_reproduces_the_network_exactly(scale: int) -> None:
    net = _net(scale)
    x = _pyramid(scale)[0]
    full = slim_network(net, [list(range(c)) for c in layer_widths(net)])
    assert full.hparams == net.hparams
    for a, b in zip(full(x), net(x), strict=True):
        assert torch.equal(a, b)
    # dual regression pruning to all channels leaves the network exactly as it was
    pruned, kept = dr_prune(net, DualNetworks(phase=net.phase, width=4), layer_widths(net),
                            [_pyramid(scale)])
    assert kept == [list(range(c)) for c in layer_widths(net)]
    assert torch.equal(pruned(x)[-1], net(x)[-1])
    # a permutation of all channels is the same function up to summation order
    gen = torch.Generator().manual_seed(2)
    perm = slim_network(net, [torch.randperm(c, generator=gen) for c in layer_widths(net)])
    torch.testing.assert_close(perm(x)[-1], net(x)[-1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [2, 4])
def test_physically_pruned_network_equals_the_masked_network(scale: int) -> None:
    net = _net(scale, seed=3)
    gen = torch.Generator().manual_seed(5)
    kept = [sorted(torch.randperm(c, generator=gen)[: max(1, c // 2 - 1)].tolist())
            for c in layer_widths(net)]
    slim = slim_network(net, kept)
    assert layer_widths(slim) == [len(k) for k in kept]
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in net.parameters())
    x = _pyramid(scale, seed=4)[0]
    with _masked(net, kept):
        ref = net(x)
    for a, b in zip(slim(x), ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # without the masks the outputs differ: the test can tell pruned from unpruned
    assert not torch.allclose(net(x)[-1], slim(x)[-1], atol=1e-4)
    with pytest.raises(ValueError):
        slim_network(net, [[0, 0]] + kept[1:])


@pytest.mark.cuda
def test_physical_pruning_on_cuda_matches_cpu() -> None:
    """The slim network is built on the model's device (the PixelShuffle upsampler's channel
    groups once mixed a CPU index into CUDA tensors: `vsr compress --device cuda` failed)."""
    net = _net(4, seed=3)
    gen = torch.Generator().manual_seed(5)
    kept = [sorted(torch.randperm(c, generator=gen)[: max(1, c // 2)].tolist())
            for c in layer_widths(net)]
    cpu = slim_network(net, kept)
    gpu = slim_network(net.cuda(), kept)
    assert next(gpu.parameters()).is_cuda
    for (name, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b.cpu(), msg=name)


def test_dr_prune_selects_the_searched_count_and_copies_original_weights() -> None:
    net = _net(2, seed=7)
    duals = DualNetworks(phase=1, width=4)
    widths = [w // 2 for w in layer_widths(net)]
    batches = [_pyramid(2, seed=s) for s in (1, 2)]
    # SGD refit at lr 0: no per-selection fine-tuning, so the result is the original's kept
    # weights
    slim, kept = dr_prune(net, duals, widths, batches, refit="sgd", lr=0.0)
    assert [len(k) for k in kept] == widths
    ref = slim_network(net, kept)
    for (name, a), b in zip(slim.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # with fine-tuning the consumer weights of the kept channels move, the rest stay
    tuned, kept2 = dr_prune(net, duals, widths, batches, refit="sgd", lr=1e-2)
    assert kept2 == kept  # selection of a layer precedes its own fine-tuning steps
    assert not torch.equal(tuned.down[0].conv2.weight, ref.down[0].conv2.weight)
    assert torch.equal(tuned.head.weight, ref.head.weight)
    with pytest.raises(ValueError, match="refit"):
        dr_prune(net, duals, widths, batches, refit="adam")


def _consumer_io(model: DRN, index: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) of compressible layer ``index``'s consumer on ``x``."""
    seen: list[torch.Tensor] = []
    cons = prunable_layers(model)[index].consumer
    handles = [cons.register_forward_pre_hook(lambda _m, a: seen.append(a[0])),
               cons.register_forward_hook(lambda _m, _a, out: seen.append(out))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen[0], seen[1]


@pytest.mark.parametrize("index", [0, 1, 2])  # a DownBlock, an RCAB, the upsampler (1x1)
def test_lstsq_refit_of_every_channel_recovers_the_original_layer(index: int) -> None:
    from vsr.compress.prune import _lstsq_refit, _normal_equations

    net = _net(2, seed=11)
    batches = [_pyramid(2, n=4, size=12, seed=s) for s in (3, 4)]
    targets = [_consumer_io(net, index, b[0])[1] for b in batches]
    work = copy.deepcopy(net)
    layer = prunable_layers(work)[index]
    with torch.no_grad():
        layer.consumer.weight.zero_()
    gram, cross = _normal_equations(work, layer, batches, targets)
    _lstsq_refit(layer, gram, cross, list(range(layer.width)), ridge=0.0)
    # the consumer computes what the original computed (weights of inputs that are always
    # zero, e.g. dead ReLU channels, are not identifiable, so the outputs are compared)
    for b, target in zip(batches, targets, strict=True):
        torch.testing.assert_close(_consumer_io(work, index, b[0])[1], target,
                                   rtol=1e-4, atol=1e-5)


def test_lstsq_refit_reconstructs_features_better_than_the_copied_weights() -> None:
    net = _net(2, seed=12, n_feats=8)
    duals = DualNetworks(phase=1, width=4)
    widths = [max(1, w // 2) for w in layer_widths(net)]
    batches = [_pyramid(2, n=4, size=12, seed=s) for s in (5, 6)]
    fitted, kept = dr_prune(net, duals, widths, batches, refit="lstsq")
    copied = slim_network(net, kept)  # same channels, the original weights
    x = batches[0][0]
    # the first layer sees the same input in both, so its reconstruction error is comparable
    target = _consumer_io(net, 0, x)[1]
    err_fit = (_consumer_io(fitted, 0, x)[1] - target).pow(2).mean()
    err_copy = (_consumer_io(copied, 0, x)[1] - target).pow(2).mean()
    assert err_fit < err_copy


def test_l1_baseline_keeps_largest_filters() -> None:
    net = _net(2, seed=9)
    widths = [w // 2 for w in layer_widths(net)]
    slim, kept = l1_prune(net, widths)
    layer = prunable_layers(net)[0]
    norms = layer.producer.weight.abs().sum(dim=(1, 2, 3))
    assert set(kept[0]) == set(torch.topk(norms, widths[0]).indices.tolist())
    assert layer_widths(slim) == widths


def test_search_trains_alpha_and_reads_out_candidate_widths() -> None:
    net = _net(2, seed=11)
    duals = DualNetworks(phase=1, width=4)
    before = copy.deepcopy(net.state_dict())
    scores: list[float] = []

    def score(model: DRN) -> float:
        scores.append(float(len(scores)))
        return scores[-1]  # later readouts "score" higher: the last one must be kept

    res = run_search(net, duals, 0.5, steps=4, train_batch=lambda s: _pyramid(2, seed=s),
                     val_batch=lambda s: _pyramid(2, seed=100 + s), score=score, val_every=2)
    assert len(res.widths) == len(layer_widths(net))
    for w, cands in zip(res.widths, res.candidates, strict=True):
        assert w in cands
    assert res.val_psnr == 1.0 and [h["step"] for h in res.history] == [2, 4]
    assert any(abs(p - 1 / 6) > 1e-6 for probs in res.alphas for p in probs)  # alpha moved
    for k, v in net.state_dict().items():  # the original is untouched
        assert torch.equal(v, before[k]), k
