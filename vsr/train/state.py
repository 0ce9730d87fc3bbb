"""Training states in the project's safetensors format, compact and shardable.

A state holds the primal (plain keys, fp32), the duals (``dual.``) and, unless left out, the
optimizers' moments (``optim.<name>.<param>.<key>``, fp32 or bf16). Its metadata is a training
checkpoint's (architecture, hparams, provenance) plus ``training_state``: the step, the
schedule, the RNG states, the optimizers' hyper-parameters and the run's config. Written as one
file, or as shards of at most a given size (``<stem>.00.safetensors``, ``<stem>.01...``), each a
checkpoint with the same metadata and a ``vsr.shard`` entry naming the save they belong to, so
shards of two different saves are never mixed.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vsr.errors import CheckpointError, ConfigError
from vsr.models.checkpoint import (
    CheckpointInfo,
    atomic_save,
    load_state_into,
    load_tensors,
    read_header,
)

MOMENTS = ("fp32", "bf16", "none")
_SHARD_KEY = "vsr.shard"
_HEADER_MARGIN = 1 << 20  # bytes kept free in a shard for the JSON header


def flatten_optimizer(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor],
                                                                      dict[str, Any]]:
    """Optimizer state as tensors ``optim.<name>.<param>.<key>`` plus a JSON-able rest."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{name}.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(name: str, opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                      rest: Mapping[str, Any]) -> None:
    """Load what :func:`flatten_optimizer` saved (moments in any float dtype: the optimizer
    casts them to its parameters' dtype)."""
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optim.{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            pid, field = key[len(prefix):].split(".", 1)
            state.setdefault(int(pid), {})[field] = value
    for key, value in rest.get("scalars", {}).items():
        pid, field = key.split(".", 1)
        state.setdefault(int(pid), {})[field] = value
    opt.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def rng_state(device: torch.device) -> dict[str, str | None]:
    """torch's global RNG states (CPU, and the device's on CUDA), base64, for the metadata."""
    cuda = (torch.cuda.get_rng_state(device).numpy().tobytes()
            if device.type == "cuda" else None)
    return {"torch_cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
            "cuda": base64.b64encode(cuda).decode() if cuda is not None else None}


def restore_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Put back what :func:`rng_state` saved (the CUDA one only on a CUDA device)."""
    raw = state.get("torch_cpu")
    if raw:
        torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(raw)),
                                             dtype=torch.uint8))
    raw = state.get("cuda")
    if raw and device.type == "cuda":
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(raw)),
                                                  dtype=torch.uint8), device)


def state_paths(run_dir: Path, stem: str) -> list[Path]:
    """The state files of ``run_dir``: ``<stem>.safetensors``, else its shards in order."""
    single = run_dir / f"{stem}.safetensors"
    if single.exists():
        return [single]
    shards = {}
    for path in run_dir.glob(f"{stem}.*.safetensors"):
        index = path.name[len(stem) + 1:-len(".safetensors")]
        if index.isdigit():  # .00 .. .99, then .100 and on: ordered by number, not by name
            shards[int(index)] = path
    return [shards[i] for i in sorted(shards)]


def save_training_state(run_dir: Path, stem: str, primal: nn.Module, duals: nn.Module,
                        optimizers: Mapping[str, torch.optim.Optimizer], step: int,
                        info: CheckpointInfo, extra_meta: Mapping[str, Any], *,
                        moments: str = "fp32", shard_bytes: int | None = None) -> list[Path]:
    """Write the state of ``step``; returns the files written (older files of the stem go).

    ``moments``: fp32 (exact resume), bf16 (half the size, near-exact) or none (optimizers
    restart). ``shard_bytes``: split into files of at most this many bytes.

    Raises:
        ConfigError: a single tensor is larger than a shard may be.
    """
    if moments not in MOMENTS:
        raise ConfigError(f"moments must be one of {', '.join(MOMENTS)}, got {moments!r}")
    tensors = {k: v.detach().float() if v.is_floating_point() else v.detach()
               for k, v in primal.state_dict().items()}
    tensors.update({f"dual.{k}": v.detach() for k, v in duals.state_dict().items()})
    opt_meta = {}
    for name, opt in optimizers.items():
        t, rest = flatten_optimizer(name, opt)
        if moments == "none":
            rest = {"param_groups": rest["param_groups"], "scalars": {}}
            t = {}
        elif moments == "bf16":
            t = {k: v.to(torch.bfloat16) if v.is_floating_point() and v.ndim else v
                 for k, v in t.items()}
        tensors.update(t)
        opt_meta[name] = rest
    provenance = dict(info.provenance)
    provenance["training_state"] = {"step": step, "optimizers": opt_meta, "moments": moments,
                                    "dual_hparams": getattr(duals, "hparams", {}),
                                    **dict(extra_meta)}
    meta = CheckpointInfo(arch=info.arch, hparams=info.hparams, scale=info.scale,
                          kind="training", name=info.name, provenance=provenance).to_metadata()
    groups = _shards(tensors, shard_bytes) if shard_bytes else [list(tensors)]
    old = set(state_paths(run_dir, stem))
    if len(groups) == 1 and not shard_bytes:
        paths = [run_dir / f"{stem}.safetensors"]
    else:
        paths = [run_dir / f"{stem}.{i:02d}.safetensors" for i in range(len(groups))]
    save_id = secrets.token_hex(8)
    for i, (path, keys) in enumerate(zip(paths, groups, strict=True)):
        shard_meta = dict(meta)
        if len(paths) > 1 or shard_bytes:
            shard_meta[_SHARD_KEY] = json.dumps({"index": i, "count": len(paths), "id": save_id})
        atomic_save(path, {k: tensors[k] for k in keys}, shard_meta)
    for stale in old - set(paths):
        stale.unlink(missing_ok=True)
    return paths


def _shards(tensors: Mapping[str, torch.Tensor], limit: int) -> list[list[str]]:
    """Greedy packing of tensors, in order, into groups of at most ``limit`` bytes."""
    room = limit - _HEADER_MARGIN
    groups: list[list[str]] = [[]]
    used = 0
    for key, value in tensors.items():
        size = value.numel() * value.element_size()
        if size > room:
            raise ConfigError(f"tensor {key} ({size} bytes) does not fit a {limit}-byte shard")
        if used + size > room and groups[-1]:
            groups.append([])
            used = 0
        groups[-1].append(key)
        used += size
    return groups


def read_training_state(paths: list[Path]) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """Tensors and info of one saved state (one file or all its shards, checked together)."""
    if not paths:
        raise CheckpointError("no training state to read")
    tensors: dict[str, torch.Tensor] = {}
    info = None
    ids = set()
    for i, path in enumerate(paths):
        t, shard_info = load_tensors(path)
        if shard_info.kind != "training":
            raise CheckpointError(f"{path}: an inference checkpoint cannot resume training")
        raw = read_header(path)[1].get(_SHARD_KEY)
        if raw is not None:
            try:
                shard = json.loads(raw)
                index, count, save_id = shard["index"], shard["count"], shard["id"]
            except (ValueError, KeyError, TypeError):
                raise CheckpointError(f"{path}: malformed shard entry {raw[:80]!r}") from None
            if index != i or count != len(paths):
                raise CheckpointError(f"{path}: shard {index} of {count}, "
                                      f"but {len(paths)} shard files were found")
            ids.add(save_id)
        elif len(paths) > 1:
            raise CheckpointError(f"{path}: not a shard of a training state")
        tensors.update(t)
        info = info or shard_info
    if len(ids) > 1:
        raise CheckpointError(f"{paths[0].parent}: the state shards come from different saves")
    assert info is not None
    return tensors, info


def load_training_state(paths: list[Path], primal: nn.Module, duals: nn.Module,
                        optimizers: Mapping[str, torch.optim.Optimizer]) -> dict[str, Any]:
    """Restore everything saved by :func:`save_training_state`; returns its training_state.

    Optimizers whose moments were left out keep their fresh state.
    """
    tensors, info = read_training_state(paths)
    where = paths[0]
    state = info.provenance.get("training_state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: training state missing from the checkpoint")
    load_state_into(primal, tensors, where)
    load_state_into(duals, tensors, where, prefix="dual.", ignore=())
    if state.get("moments", "fp32") == "none":
        return state
    for name, opt in optimizers.items():
        rest = state["optimizers"].get(name)
        if rest is None:
            raise CheckpointError(f"{where}: no state for optimizer {name!r}")
        restore_optimizer(name, opt, tensors, rest)
    return state
