"""Training checkpoints in the project's safetensors format (optimizer state included)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vsr.errors import CheckpointError
from vsr.models.checkpoint import CheckpointInfo, load_state_into, load_tensors, save_model


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


def save_training_state(path: Path, primal: nn.Module, duals: nn.Module,
                        optimizers: Mapping[str, torch.optim.Optimizer], step: int,
                        info: CheckpointInfo, extra_meta: Mapping[str, Any]) -> Path:
    """Primal (plain keys), duals (``dual.``) and optimizers (``optim.``) in one file."""
    extra = {f"dual.{k}": v for k, v in duals.state_dict().items()}
    opt_meta = {}
    for name, opt in optimizers.items():
        t, rest = flatten_optimizer(name, opt)
        extra.update(t)
        opt_meta[name] = rest
    provenance = dict(info.provenance)
    provenance["training_state"] = {"step": step, "optimizers": opt_meta,
                                    "dual_hparams": getattr(duals, "hparams", {}),
                                    **dict(extra_meta)}
    ck = CheckpointInfo(arch=info.arch, hparams=info.hparams, scale=info.scale, kind="training",
                        name=info.name, provenance=provenance)
    return save_model(path, primal, ck, extra=extra)


def load_training_state(path: Path, primal: nn.Module, duals: nn.Module,
                        optimizers: Mapping[str, torch.optim.Optimizer]) -> dict[str, Any]:
    """Restore everything saved by :func:`save_training_state`; returns its training_state."""
    tensors, info = load_tensors(path)
    if info.kind != "training":
        raise CheckpointError(f"{path}: an inference checkpoint cannot resume training")
    state = info.provenance.get("training_state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: training state missing from the checkpoint")
    load_state_into(primal, tensors, path)
    load_state_into(duals, tensors, path, prefix="dual.", ignore=())
    for name, opt in optimizers.items():
        rest = state["optimizers"].get(name)
        if rest is None:
            raise CheckpointError(f"{path}: no state for optimizer {name!r}")
        restore_optimizer(name, opt, tensors, rest)
    return state
