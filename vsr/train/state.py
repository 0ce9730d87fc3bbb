"""Training states in the project's safetensors format, compact and shardable.

A state holds the primal (plain keys, fp32), the duals (``dual.``) and, unless left out, the
optimizers' moments (``optim.<name>.<param>.<key>``, fp32 or bf16). Its metadata is a training
checkpoint's (architecture, hparams, provenance) plus ``training_state``: the step, the
schedule, the RNG states, the optimizers' hyper-parameters and the run's config. Written as one
file (``<stem>.safetensors``), or as shards of at most a given size, each a checkpoint with the
same metadata and a ``vsr.shard`` entry naming the save they belong to, so shards of two
different saves are never mixed.

A save is all or nothing: whatever interrupts it (a crash, SIGKILL, a full disk), the folder
still holds the complete previous state or the complete new one. Shards of a save have names of
their own (``<stem>.<save id>.00.safetensors``, ...) and become the state only when the small
index ``<stem>.index.json`` naming them is renamed into place, after they are on disk (fsync);
a single file replaces the old one by one rename, then the index of an older sharded save goes.
Files of other saves are removed only after that switch, and leftovers of an interrupted save
are removed by the next save or resume (:func:`remove_stale_state`). Which files are current:
the index if there is one, else ``<stem>.safetensors``, else shards named
``<stem>.00.safetensors``, ``<stem>.01...`` (what versions before the index wrote; still read).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vsr.errors import CheckpointError, ConfigError
from vsr.io.output import store_file
from vsr.models.checkpoint import (
    CheckpointInfo,
    atomic_save,
    load_state_into,
    load_tensors,
    read_header,
)

MOMENTS = ("fp32", "bf16", "none")
_SHARD_KEY = "vsr.shard"
_INDEX_FORMAT = "vsr-train-state-index/1"
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


def index_path(run_dir: Path, stem: str) -> Path:
    """The index of a sharded state: which shard files, in order, are the current state."""
    return run_dir / f"{stem}.index.json"


def state_paths(run_dir: Path, stem: str) -> list[Path]:
    """The current state files of ``run_dir`` (see the module docstring), [] if none.

    Raises:
        CheckpointError: the index is unreadable or names files outside the stem.
    """
    index = index_path(run_dir, stem)
    if index.exists():
        return _read_index(index, stem)
    single = run_dir / f"{stem}.safetensors"
    if single.exists():
        return [single]
    shards = {}
    for path in run_dir.glob(f"{stem}.*.safetensors"):
        number = path.name[len(stem) + 1:-len(".safetensors")]
        if number.isdigit():  # .00 .. .99, then .100 and on: ordered by number, not by name
            shards[int(number)] = path
    return [shards[i] for i in sorted(shards)]


def _read_index(index: Path, stem: str) -> list[Path]:
    try:
        data = json.loads(index.read_text())
        names = data["files"]
        ok = (data.get("format") == _INDEX_FORMAT and isinstance(names, list) and names
              and all(isinstance(n, str) and n.startswith(f"{stem}.") and Path(n).name == n
                      and n.endswith(".safetensors") for n in names))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise CheckpointError(f"{index}: malformed training state index")
    return [index.parent / n for n in names]


def remove_stale_state(run_dir: Path, stem: str) -> list[Path]:
    """Delete the files of ``stem`` that are not the current state: older saves, and what an
    interrupted save left (its shards, temporary files). Returns what was removed."""
    current = set(state_paths(run_dir, stem))
    # the state's files, the temporary files of their writes (vsr.io.output.temp_path_for,
    # and the .tmp names of older versions)
    ours = re.compile(rf"{re.escape(stem)}(\.[0-9a-f]{{16}})?(\.\d+)?\.safetensors"
                      rf"|\.{re.escape(stem)}(\.[0-9a-f]{{16}}\.\d+|\.index)?\.\d{{1,7}}"
                      rf"\.[0-9a-f]{{12}}\.partial\.(safetensors|json)"
                      rf"|\.{re.escape(stem)}\..*\.tmp")
    removed = []
    for path in run_dir.iterdir() if run_dir.is_dir() else ():
        if ours.fullmatch(path.name) and path not in current and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to the disk (folders: POSIX only)."""
    if path.is_dir() and os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_index(index: Path, names: list[str], save_id: str, step: int) -> None:
    """Put the index in place with one rename, its content on disk before."""
    text = json.dumps({"format": _INDEX_FORMAT, "id": save_id, "step": step, "files": names})
    store_file(index, (text + "\n").encode())
    _fsync(index.parent)


def save_training_state(run_dir: Path, stem: str, primal: nn.Module, duals: nn.Module,
                        optimizers: Mapping[str, torch.optim.Optimizer], step: int,
                        info: CheckpointInfo, extra_meta: Mapping[str, Any], *,
                        moments: str = "fp32", shard_bytes: int | None = None,
                        hook: Callable[[str, Path], None] | None = None) -> list[Path]:
    """Write the state of ``step``, all or nothing (see the module docstring); returns its
    files. Files of older saves of the stem, and leftovers of interrupted ones, go.

    ``moments``: fp32 (exact resume), bf16 (half the size, near-exact) or none (optimizers
    restart). ``shard_bytes``: split into files of at most this many bytes. ``hook``: called
    with ``("written", file)`` once each new file is on disk, then ``("current", file)``
    when the new state has replaced the old one (progress, and a fixed point at which tests
    kill a save).

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
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_state(run_dir, stem)  # what an interrupted save left: its room is needed now
    if len(groups) == 1 and not shard_bytes:
        path = run_dir / f"{stem}.safetensors"
        atomic_save(path, tensors, meta)  # the switch when the older state is a single file
        _fsync(path)
        _fsync(run_dir)
        if hook is not None:
            hook("written", path)
        index_path(run_dir, stem).unlink(missing_ok=True)  # the switch for an older sharded one
        _fsync(run_dir)
        paths = [path]
    else:
        save_id = secrets.token_hex(8)
        paths = [run_dir / f"{stem}.{save_id}.{i:02d}.safetensors" for i in range(len(groups))]
        for i, (path, keys) in enumerate(zip(paths, groups, strict=True)):
            shard_meta = dict(meta)
            shard_meta[_SHARD_KEY] = json.dumps({"index": i, "count": len(paths), "id": save_id})
            atomic_save(path, {k: tensors[k] for k in keys}, shard_meta)
            _fsync(path)
            if hook is not None:
                hook("written", path)
        _fsync(run_dir)
        _write_index(index_path(run_dir, stem), [p.name for p in paths], save_id, step)
    if hook is not None:
        hook("current", paths[0])
    remove_stale_state(run_dir, stem)
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
