"""`vsr compress` as a library call: search -> prune -> fine-tune, a file after each stage.

Files in the output folder:
  search.json             the channel configuration (widths per compressible layer)
  pruned.safetensors      the slim network right after pruning (+ ``dual.*`` tensors)
  compressed.safetensors  the fine-tuned slim network: an ordinary checkpoint
  summary.json            what each stage did (appended to by every stage)
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from vsr.compress.config import CompressConfig
from vsr.compress.data import Batches, split_sampler, validation_psnr
from vsr.compress.finetune import finetune
from vsr.compress.layers import candidate_widths, layer_widths, prunable_layers
from vsr.compress.prune import dr_prune, l1_prune
from vsr.compress.search import run_search
from vsr.device import resolve_device
from vsr.errors import CheckpointError, ConfigError, OutputError
from vsr.io.output import stale_partials, store_file, write_failure, write_reason
from vsr.loading import check_finite_weights
from vsr.models import (
    CheckpointInfo,
    DualNetworks,
    count_params,
    load_network,
    macs_96,
    macs_720p,
    save_model,
)
from vsr.models.checkpoint import load_state_into, load_tensors, read_info
from vsr.models.drn import DRN
from vsr.train.data import PatchSampler
from vsr.train.lock import folder_lock
from vsr.train.losses import dual_loss
from vsr.train.state import read_training_state, state_paths

log = logging.getLogger(__name__)

SEARCH_FILE = "search.json"
PRUNED_FILE = "pruned.safetensors"
COMPRESSED_FILE = "compressed.safetensors"
SUMMARY_FILE = "summary.json"
STAGE_FILES = {"search": SEARCH_FILE, "prune": PRUNED_FILE, "finetune": COMPRESSED_FILE}

ProgressCallback = Callable[[str, int, int, str], None]  # stage, step, total, message


@dataclass
class CompressResult:
    out: Path
    stages: list[str]
    summary: dict[str, Any]


def model_stats(model: nn.Module) -> dict[str, int]:
    """Parameters and multiply-adds (96x96 LR input; 1280x720 output)."""
    return {"params": count_params(model), "macs_96": macs_96(model),
            "macs_720p": macs_720p(model, int(model.scale))}


class _Run:
    def __init__(self, config: CompressConfig, progress: ProgressCallback | None) -> None:
        self.cfg = config
        self.progress = progress
        self.device = resolve_device(config.device, require_available=True)
        self.out = config.out_dir
        order = list(STAGE_FILES)
        self.stages = order if config.stage == "all" else [config.stage]
        original, self.info = load_network(config.checkpoint)
        if not isinstance(original, DRN):
            raise ConfigError(f"{config.checkpoint}: only DRN checkpoints can be compressed")
        # before any stage writes: NaN weights would search and prune, then fail to fine-tune
        check_finite_weights(original.state_dict().items(), config.checkpoint)
        self.original = original.to(self.device).eval()
        self.scale = int(self.original.scale)
        self.base = self.info.provenance.get("base") or self.info.name or \
            Path(config.checkpoint).stem
        self.base_sha256 = weights_sha256(self.original)  # which network the stages come from
        self._sampler: PatchSampler | None = None
        # the inputs first (a one-line error names what is wrong with them), then the folder
        if self.stages[0] == "prune":
            self._search_record()
        elif self.stages[0] == "finetune":
            self._pruned_info()
        # a stage replaces its own file, and those of the later stages no longer follow from it
        later = order[order.index(self.stages[0]):]
        held = [STAGE_FILES[s] for s in later if (self.out / STAGE_FILES[s]).exists()]
        if held and not config.overwrite:
            raise OutputError(f"{self.out} already holds compress results ({', '.join(held)}); "
                              "use --overwrite to replace them, or another --out")
        if config.val_data:  # now, not at the first validation after many search steps
            from vsr.evaluate import check_benchmark

            check_benchmark(config.val_data, self.scale)
        given_widths = config.method == "l1" or config.widths_from
        if self.stages != ["search"] or not given_widths:  # the images are needed: read them
            _ = self.sampler  # raises InputError (no images) before anything is written
        self.out.mkdir(parents=True, exist_ok=True)
        for path in _leftovers(self.out):  # this process holds the folder: none is in use
            path.unlink(missing_ok=True)
            log.info("removed %s, left by an interrupted write", path.name)
        self.summary = self._read_json(SUMMARY_FILE) or {}

    # ---- helpers
    def _read_json(self, name: str) -> dict[str, Any] | None:
        path = self.out / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable ({exc})") from None

    def _write_json(self, name: str, obj: dict[str, Any]) -> None:
        with self._writing(name):
            store_file(self.out / name, json.dumps(obj, indent=2).encode())

    @contextmanager
    def _writing(self, name: str) -> Iterator[None]:
        """A failed write in ``out`` (a full disk, a read-only folder) as one OutputError;
        files are written whole or not at all, so those of finished stages stay usable."""
        try:
            yield
        except (OSError, SafetensorError, OutputError) as exc:
            if (why := write_failure(exc)) is None:
                raise
            raise OutputError(f"{self.out}: cannot write {name} ({write_reason(why)})") from None

    def _tick(self, stage: str) -> Callable[[int, int, str], None] | None:
        if self.progress is None:
            return None
        cb = self.progress
        return lambda step, total, msg: cb(stage, step, total, msg)

    @property
    def sampler(self) -> PatchSampler:
        if self._sampler is None:
            self._sampler = PatchSampler(self.cfg.data, self.cfg.patch * self.scale)
        return self._sampler

    def _batches(self, sampler: PatchSampler, batch_size: int, stream: int) -> Batches:
        return Batches(sampler, batch_size, self.scale, self.cfg.seed, stream, self.device)

    def _score(self) -> Callable[[nn.Module], float] | None:
        if not self.cfg.val_data:
            return None
        folder, scale = self.cfg.val_data, self.scale
        return lambda m: validation_psnr(m, folder, scale)[0]

    def _duals(self) -> DualNetworks:
        """Dual models for the original: from --duals or the checkpoint, else fitted."""
        phase = self.original.phase
        for source in (self.cfg.duals, self.cfg.checkpoint):
            if not source:
                continue
            if str(source).endswith(".index.json"):  # a sharded training state (GPU slots)
                index = Path(source)
                tensors, _ = read_training_state(
                    state_paths(index.parent, index.name.removesuffix(".index.json")))
            else:
                tensors, _ = load_tensors(source)
            if "dual.0.conv1.weight" not in tensors:
                if source == self.cfg.duals:
                    raise CheckpointError(f"{source}: holds no dual.* tensors")
                continue
            duals = DualNetworks(phase=phase, width=int(tensors["dual.0.conv1.weight"].shape[0]))
            load_state_into(duals, tensors, source, prefix="dual.", ignore=())
            log.info("dual models loaded from %s", source)
            return duals.to(self.device)
        duals = DualNetworks(phase=phase, width=int(self.original.hparams["n_feats"]))
        duals = duals.to(self.device)
        opt = torch.optim.Adam(duals.parameters(), lr=1e-3)
        batches = self._batches(self.sampler, self.cfg.batch_size, stream=3)
        tick = self._tick("duals")
        for step in range(self.cfg.dual_warmup):
            pyramid = batches(step)
            with torch.no_grad():
                outs = self.original(pyramid[0])
            loss = dual_loss(duals, outs, pyramid)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if tick:
                tick(step + 1, self.cfg.dual_warmup, f"loss {float(loss.detach()):.4f}")
        return duals

    def _info(self, model: DRN, stage: str, extra: dict[str, Any]) -> CheckpointInfo:
        cfg = self.cfg
        name = f"{self.base}-{cfg.method}{ratio_tag(cfg.ratio)}"
        prov = {"tool": "vsr compress", "stage": stage, "base": self.base,
                "base_checkpoint": str(cfg.checkpoint), "base_sha256": self.base_sha256,
                "ratio": cfg.ratio,
                "method": cfg.method, "widths": layer_widths(model),
                "original_widths": layer_widths(self.original), "data": list(cfg.data),
                "seed": cfg.seed, **extra}
        return CheckpointInfo(arch="drn", hparams=model.hparams, scale=self.scale, name=name,
                              provenance=prov)

    # ---- stages
    def search(self) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        if cfg.method == "l1" or cfg.widths_from:
            widths = self._given_widths()
            record: dict[str, Any] = {"widths": widths,
                                      "original_widths": layer_widths(self.original),
                                      "source": cfg.widths_from or "uniform round4(c*(1-r))"}
        else:
            train, val = split_sampler(self.sampler, cfg.holdout)
            result = run_search(
                self.original, self._duals(), cfg.ratio, steps=cfg.search_steps,
                train_batch=self._batches(train, cfg.batch_size, stream=0),
                val_batch=self._batches(val, cfg.batch_size, stream=1),
                score=self._score(), val_every=cfg.search_val_every, alpha_lr=cfg.alpha_lr,
                weight_lr=cfg.search_lr, dual_lambda=cfg.dual_lambda, seed=cfg.seed,
                progress=self._tick("search"))
            record = result.to_json()
        record.update({"method": cfg.method, "ratio": cfg.ratio, "base": self.base,
                       "checkpoint": str(cfg.checkpoint), "checkpoint_sha256": self.base_sha256,
                       "seconds": round(time.perf_counter() - t0, 1)})
        self._write_json(SEARCH_FILE, record)
        return {"widths": record["widths"], "val_psnr": record.get("val_psnr"),
                "seconds": record["seconds"]}

    def _given_widths(self) -> list[int]:
        layers = prunable_layers(self.original)
        if self.cfg.widths_from:
            try:
                raw = json.loads(Path(self.cfg.widths_from).read_text())["widths"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{self.cfg.widths_from}: no widths list ({exc})") from None
            return self._fitting_widths(raw, self.cfg.widths_from)
        return [candidate_widths(layer.width, self.cfg.ratio)[-1] for layer in layers]

    def _fitting_widths(self, raw: object, source: object) -> list[int]:
        """``raw`` as one width per compressible layer of the network, each an integer from
        1 to the layer's own width; else ConfigError naming ``source`` (JSON's 1e400 is an
        infinite float: int() of it raised an OverflowError)."""
        full = [layer.width for layer in prunable_layers(self.original)]
        if not isinstance(raw, list) or not all(type(w) is int for w in raw):
            raise ConfigError(f"{source}: widths must be a list of integers, not "
                              f"{json.dumps(raw)[:80]}")
        if len(raw) != len(full) or any(not 1 <= w <= c
                                        for w, c in zip(raw, full, strict=True)):
            raise ConfigError(f"{source}: widths {raw} do not fit this network (its "
                              f"{len(full)} compressible layers have widths {full})")
        return raw

    def _search_record(self) -> dict[str, Any]:
        """search.json, as the prune stage needs it (ConfigError: missing, another run's)."""
        cfg = self.cfg
        record = self._read_json(SEARCH_FILE)
        if record is None:
            raise ConfigError(f"{self.out / SEARCH_FILE} missing: run --stage search first")
        if record.get("method") != cfg.method or record.get("ratio") != cfg.ratio:
            raise ConfigError(f"{self.out / SEARCH_FILE} was made with method "
                              f"{record.get('method')} ratio {record.get('ratio')}, not "
                              f"{cfg.method} {cfg.ratio}: use another --out or rerun search")
        self._same_base(self.out / SEARCH_FILE, record.get("checkpoint"),
                        record.get("checkpoint_sha256"), "search")
        return record

    def _same_base(self, path: Path, checkpoint: object, sha256: object, stage: str) -> None:
        """Raise ConfigError unless the stage file ``path`` was made from the weights of
        ``--checkpoint`` (by the content hash recorded in it: a path alone may since hold
        another network)."""
        if sha256 == self.base_sha256:
            return
        if sha256 is None:
            raise ConfigError(f"{path} does not record which checkpoint it was made from (an "
                              f"older vsr): rerun --stage {stage} to use it with "
                              f"{self.cfg.checkpoint}")
        raise ConfigError(f"{path} was made from {checkpoint} (weights sha256 "
                          f"{str(sha256)[:12]}), not from --checkpoint {self.cfg.checkpoint} "
                          f"(weights sha256 {self.base_sha256[:12]}): give that checkpoint, "
                          f"or rerun --stage {stage} (or use another --out)")

    def _pruned_info(self) -> CheckpointInfo:
        """pruned.safetensors' description, as the finetune stage needs it (ConfigError:
        missing, pruned by another method; CheckpointError: unreadable)."""
        path = self.out / PRUNED_FILE
        if not path.is_file():
            raise ConfigError(f"{path} missing: run --stage prune first")
        info = read_info(path)
        if info.provenance.get("method") != self.cfg.method:
            raise ConfigError(f"{path} was pruned with {info.provenance.get('method')}, "
                              f"not {self.cfg.method}")
        self._same_base(path, info.provenance.get("base_checkpoint"),
                        info.provenance.get("base_sha256"), "prune")
        return info

    def prune(self) -> dict[str, Any]:
        cfg = self.cfg
        record = self._search_record()
        widths = self._fitting_widths(record.get("widths"), self.out / SEARCH_FILE)
        t0 = time.perf_counter()
        duals = self._duals()
        if cfg.method == "drc":
            batches = self._batches(self.sampler, cfg.prune_batch_size, stream=2)
            data = [batches(i) for i in range(cfg.prune_batches)]
            slim, kept = dr_prune(self.original, duals, widths, data, refit=cfg.prune_refit,
                                  lr=cfg.prune_lr, dual_lambda=cfg.dual_lambda,
                                  progress=self._tick("prune"))
        else:
            slim, kept = l1_prune(self.original, widths)
        seconds = round(time.perf_counter() - t0, 1)
        extra = {f"dual.{k}": v for k, v in duals.state_dict().items()}
        record = {"kept": kept, "dual_hparams": duals.hparams}
        if cfg.method == "drc":
            record.update(prune_refit=cfg.prune_refit, prune_batches=cfg.prune_batches)
        info = self._info(slim, "pruned", record)
        with self._writing(PRUNED_FILE):
            save_model(self.out / PRUNED_FILE, slim, info, extra=extra)
        return {"widths": widths, "seconds": seconds, **model_stats(slim)}

    def finetune(self) -> dict[str, Any]:
        cfg = self.cfg
        path = self.out / PRUNED_FILE
        self._pruned_info()
        slim, info = load_network(path)
        tensors, _ = load_tensors(path)
        duals = DualNetworks(**info.provenance["dual_hparams"])
        load_state_into(duals, tensors, path, prefix="dual.", ignore=())
        slim, duals = slim.to(self.device), duals.to(self.device)
        t0 = time.perf_counter()
        res = finetune(slim, duals, self._batches(self.sampler, cfg.batch_size, stream=4),
                       steps=cfg.finetune_steps, lr=cfg.finetune_lr, lr_min=cfg.finetune_lr_min,
                       dual_lambda=cfg.dual_lambda,
                       teacher=self.original if cfg.distill > 0 else None, distill=cfg.distill,
                       score=self._score(), val_every=cfg.val_every,
                       progress=self._tick("finetune"))
        seconds = round(time.perf_counter() - t0, 1)
        extra: dict[str, Any] = {"finetune_steps": cfg.finetune_steps, "best_step": res.best_step,
                                 "finetune_lr": cfg.finetune_lr,
                                 "finetune_lr_min": cfg.finetune_lr_min,
                                 "batch_size": cfg.batch_size, "patch": cfg.patch,
                                 "dual_lambda": cfg.dual_lambda,
                                 "distill": cfg.distill, "history": res.history}
        extra.update({k: info.provenance[k] for k in ("prune_refit", "prune_batches")
                      if k in info.provenance})  # how the pruned network was made
        if res.best_psnr is not None:
            extra["val"] = {"data": cfg.val_data, "psnr": res.best_psnr}
        with self._writing(COMPRESSED_FILE):
            save_model(self.out / COMPRESSED_FILE, res.model,
                       self._info(res.model, "final", extra))
        return {"val_psnr": res.best_psnr, "best_step": res.best_step, "seconds": seconds,
                **model_stats(res.model)}

    def run(self) -> CompressResult:
        order = list(STAGE_FILES)
        self.summary.update({"checkpoint": str(self.cfg.checkpoint), "base": self.base,
                             "method": self.cfg.method, "ratio": self.cfg.ratio,
                             "original": model_stats(self.original)})
        for stage in self.stages:
            self.summary[stage] = getattr(self, stage)()
            for stale in order[order.index(stage) + 1:]:  # made from what this stage replaced
                if stale not in self.stages:
                    (self.out / STAGE_FILES[stale]).unlink(missing_ok=True)
                    self.summary.pop(stale, None)
            self._write_json(SUMMARY_FILE, self.summary)
        return CompressResult(self.out, self.stages, self.summary)


def ratio_tag(ratio: float) -> str:
    """The pruned percentage in a compressed model's name: ``50`` for 0.5, ``99.9`` for
    0.999, ``12.3`` for 0.1234; never ``0`` or ``100`` for a ratio between them (rounded to
    a whole percent, 0.999 was named ``100``)."""
    percent = ratio * 100
    if abs(percent - round(percent)) < 1e-9 and 0 < round(percent) < 100:
        return str(round(percent))
    for digits in range(1, 10):
        text = f"{percent:.{digits}f}".rstrip("0").rstrip(".")
        if 0 < float(text) < 100:
            return text
    return f"{percent:g}"


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of a network's weights: every tensor's name, dtype, shape and bytes, in name
    order (the same network from another file, or from a file moved, hashes the same)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _leftovers(out: Path) -> list[Path]:
    """Temporary files of writes a killed run left in ``out`` (they stayed for good)."""
    names = (SEARCH_FILE, SUMMARY_FILE, PRUNED_FILE, COMPRESSED_FILE)
    found = [p for name in names for p in stale_partials(out / name)]
    # the names versions before vsr.io.output.store_file wrote through
    found += [out / f".{name}.tmp" for name in (SEARCH_FILE, SUMMARY_FILE)]
    found += [p for name in (PRUNED_FILE, COMPRESSED_FILE) for p in out.glob(f".{name}.*.tmp")]
    return [p for p in found if p.is_file()]


def compress(config: CompressConfig, progress: ProgressCallback | None = None) -> CompressResult:
    """Run the configured stage(s). Raises ConfigError (missing or mismatched previous stage,
    bad widths), CheckpointError (bad checkpoint), InputError (no training images),
    OutputError (``out`` holds the files this run would replace, without ``overwrite``).

    The files of the stages run, and of the stages after them, are replaced only with
    ``config.overwrite``; those of later stages not run are then removed, as they no longer
    follow from the new ones. One process at a time uses ``out`` (OutputError for a second:
    :func:`vsr.train.lock.folder_lock`); a run that fails leaves no empty folder of its own
    making behind.
    """
    made = [d for d in (config.out_dir, *config.out_dir.parents) if not d.exists()]
    try:
        with folder_lock(config.out_dir, "vsr compress"):
            return _Run(config, progress).run()
    except BaseException:
        for folder in made:  # deepest first; a folder holding a finished stage's file stays
            try:
                folder.rmdir()
            except OSError:
                break
        raise
