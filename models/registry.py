"""The model registry: names -> frozen ModelSpec, filled explicitly in one place."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch import nn

from vsr.errors import ModelError
from vsr.models.drn import DRN
from vsr.models.dual import DualNetworks

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# Architecture name (as written in checkpoints) -> constructor. Checkpoints can only name these.
ARCHITECTURES: Mapping[str, Callable[..., nn.Module]] = MappingProxyType({
    "drn": DRN,
    "drn-dual": DualNetworks,
})


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build, load and describe one registry model."""

    name: str
    arch: str
    kwargs: Mapping[str, Any]
    scale: int
    description: str
    weights: str | None = None  # file name under models/weights/
    sha256: str | None = None
    input_contract: str = "RGB, float in [0, 1] (uint8 through the handle), any size"
    size_multiple: int = 1
    license: str = "Apache-2.0 (code); weights trained by vsr train on the data in the card"
    provenance: str = "architecture of Guo et al., arXiv 2207.07929 (DRN)"
    card: Mapping[str, Any] = field(default_factory=dict)
    base: str | None = None  # registry name a compressed model was pruned from
    ratio: float | None = None  # DRC pruning ratio r
    card_problem: str | None = None  # why the shipped model card could not be read

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"{self.name}: unknown architecture {self.arch!r}")
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))
        object.__setattr__(self, "card", MappingProxyType(dict(self.card)))

    @property
    def weights_path(self) -> Path | None:
        return WEIGHTS_DIR / self.weights if self.weights else None

    @property
    def pretrained(self) -> bool:
        """Whether the shipped weights are there, and intact where a sha256 is recorded."""
        return self.weights_problem() is None

    def weights_problem(self) -> str | None:
        """None when the shipped weights are usable; else "none" (no weights file named),
        "missing", "corrupt" (another sha256 than recorded) or "bad card" (their model card is
        missing or unreadable: ``card_problem`` says why)."""
        path = self.weights_path
        if path is None:
            return "none"
        if self.card_problem is not None:
            return "bad card"
        if not path.is_file():
            return "missing"
        if self.sha256 is not None and file_sha256(path) != self.sha256:
            return "corrupt"
        return None

    def build(self, **overrides: Any) -> nn.Module:
        """A fresh (untrained) network; ``overrides`` left as None are dropped."""
        kwargs = dict(self.kwargs)
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return ARCHITECTURES[self.arch](**kwargs)

    def verify_weights(self) -> Path:
        """The weights path, after checking it exists and (when recorded) its sha256."""
        path = self.weights_path
        if self.card_problem is not None:
            raise ModelError(self.card_problem)
        if path is None or not path.is_file():
            raise ModelError(f"model {self.name!r} has no shipped weights; train one with "
                             f"`vsr train --arch {self.name}` and pass the checkpoint path")
        if self.sha256 is not None:
            digest = file_sha256(path)
            if digest != self.sha256:
                raise ModelError(f"weights of {self.name!r} are corrupt (sha256 {digest[:12]}... "
                                 f"!= {self.sha256[:12]}...)")
        return path


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """The file's sha256, hashed once per size and modification time (a process caches it)."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _DIGESTS[key]


class Registry:
    """Name -> ModelSpec. Duplicate names raise; unknown names list the known ones."""

    def __init__(self) -> None:
        self._specs: dict[str, ModelSpec] = {}
        self.default: str | None = None

    def register(self, spec: ModelSpec, *, default: bool = False) -> ModelSpec:
        if spec.name in self._specs:
            raise ValueError(f"model {spec.name!r} is already registered")
        self._specs[spec.name] = spec
        if default:
            self.default = spec.name
        return spec

    def get(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(self._specs)
            hint = suggest(name, [*self._specs, "bicubic"])
            raise ModelError(f"unknown model {name!r}{hint}; known models: {known}, "
                             "bicubic") from None

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def names(self) -> list[str]:
        return list(self._specs)


def suggest(name: object, known: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest of ``known`` to ``name`` (case aside), or ''."""
    if not isinstance(name, str):
        return ""
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.strip().lower(), list(lowered), n=1, cutoff=0.75)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


def _paper(name: str, scale: int, n_feats: int, n_blocks: int, size: str) -> ModelSpec:
    return ModelSpec(
        name=name, arch="drn", scale=scale,
        kwargs={"scale": scale, "n_feats": n_feats, "n_blocks": n_blocks},
        description=f"DRN-{size} x{scale} (nf {n_feats}, {n_blocks} RCABs per stage)",
    )


# Keys every model card (models/weights/<name>.json) must have.
CARD_KEYS: tuple[str, ...] = ("data", "degradations", "recipe", "iterations", "eval",
                              "cpu_speed", "provenance", "license")
CARD_SETS: tuple[str, ...] = ("Set5", "Set14", "B100")


def load_card(name: str, folder: Path = WEIGHTS_DIR) -> dict[str, Any]:
    """The model card shipped next to the weights of ``name`` (``<folder>/<name>.json``).

    Raises ModelError if the file is missing, is not a JSON object, lacks a key of CARD_KEYS
    or a PSNR/SSIM for each of CARD_SETS.
    """
    path = folder / f"{name}.json"
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"model card of {name!r} unreadable ({path.name}: {exc})") from None
    if not isinstance(card, dict):
        raise ModelError(f"model card of {name!r} is not a JSON object")
    missing = [k for k in CARD_KEYS if k not in card]
    missing += [f"eval.{s}" for s in CARD_SETS
                if not {"psnr", "ssim"} <= set(card.get("eval", {}).get(s, {}))]
    if missing:
        raise ModelError(f"model card of {name!r} lacks {', '.join(missing)}")
    return card


def _shipped(name: str, **fields: Any) -> ModelSpec:
    """A registry model with shipped weights ``<name>.safetensors`` and its card. A card that
    cannot be read makes this model unusable (``card_problem``), not the registry: every other
    model, and `vsr models` that lists it, still work."""
    try:
        card, problem = load_card(name), None
    except ModelError as exc:
        card, problem = {}, f"{exc}; reinstall vsr or restore models/weights/{name}.json"
    defaults = {f.name: f.default for f in dataclasses.fields(ModelSpec)}
    return ModelSpec(name=name, arch="drn", weights=f"{name}.safetensors", card=card,
                     license=card.get("license", defaults["license"]),
                     provenance=card.get("provenance", defaults["provenance"]),
                     card_problem=problem, **fields)


REGISTRY = Registry()
REGISTRY.register(_paper("drn-s-x2", 2, 32, 30, "S"))
REGISTRY.register(_paper("drn-s-x4", 4, 16, 30, "S"))
REGISTRY.register(_paper("drn-s-x8", 8, 8, 30, "S"))
REGISTRY.register(_paper("drn-l-x2", 2, 40, 40, "L"))
REGISTRY.register(_paper("drn-l-x4", 4, 20, 40, "L"))
REGISTRY.register(_paper("drn-l-x8", 8, 10, 36, "L"))
# Light variants for video on modest hardware: same architecture, fewer and narrower blocks.
# Their upsamplers are folded: each stage's conv (C -> 4w), pixel shuffle and 1x1 projection
# (w -> out) were trained with w = C and rewritten exactly with w = out (benchmarks/
# ARCH_SEARCH.md, `arch_search.py grow --up-widths`): the same outputs for fewer mult-adds.
# Their model cards (data, recipe, measured quality and speed, licence) are the JSON files
# next to the weights; licence and provenance of the spec come from there too.
REGISTRY.register(_shipped(
    name="drn-t-x2", scale=2,
    kwargs={"scale": 2, "n_feats": 16, "n_blocks": [6], "up_widths": [16]},
    description="DRN-T x2: video variant (nf 16, 6 RCABs)",
    sha256="f614487b34eb3cd0bd7b6a2b0314633825851d6c776ae15dce4aa2ae18e57867",
))
REGISTRY.register(_shipped(
    name="drn-t-x4", scale=4,
    kwargs={"scale": 4, "n_feats": 8, "n_blocks": [12, 0], "up_widths": [16, 8]},
    description="DRN-T x4: video variant (nf 8, 12 RCABs at LR, none at x2)",
    sha256="ff967977d1057216248632ef2df4597c2a1a79da121912dfdf56359f57a7fd08",
))

# The default: drn-t-x2 compressed by DRC (vsr compress, r=0.5). It scores as drn-t-x2 does on
# Set5 and B100 (36.97 / 31.47 dB against 36.95 / 31.48) in 63-68% of its CPU time per frame
# (benchmarks/COMPRESS_RESULTS.md).
REGISTRY.register(_shipped(
    name="drn-t-x2-drc50", scale=2,
    kwargs={"scale": 2, "n_feats": 16, "n_blocks": [6], "down_widths": [8],
            "rcab_widths": [[12, 16, 16, 16, 16, 16]], "up_widths": [16]},
    description="DRN-T x2 compressed by DRC, r=0.5 (half the mult-adds of drn-t-x2)",
    sha256="3e3a8d4228f0b93471026744246177a8f52dccdb5f51a24593811e56e5e00134",
    base="drn-t-x2", ratio=0.5,
), default=True)

# For compressed input: the default, fine-tuned on x264-coded LR (CRF 12..38 on 60% of the crops,
# the rest clean). At CRF 28 it gains +0.09..+1.81 dB over bicubic on the six shared clips where
# the default gains -0.03..+1.36 dB, and it is 0.23 dB (Set5) / 0.03 dB (B100) below the default
# on clean input (benchmarks/VIDEO_EVAL.md, "Exact decoding").
REGISTRY.register(_shipped(
    name="drn-t-x2-drc50-x264", scale=2,
    kwargs=dict(REGISTRY.get("drn-t-x2-drc50").kwargs),
    description="drn-t-x2-drc50 fine-tuned for H.264-compressed input (x264 CRF 12..38, 40% clean)",
    sha256="34baed852e2f15f158c0257ea0193e6aa004bebd8fb33f628913ae9f58b0b78a",
    base="drn-t-x2-drc50",
))

DEFAULT_MODEL: str = REGISTRY.default or "drn-t-x2-drc50"
# Live streams are compressed by nature: `vsr stream` without --model uses this one (at x2).
STREAM_MODEL: str = "drn-t-x2-drc50-x264"
