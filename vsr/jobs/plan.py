"""Batch planning: inputs (files, folders, globs, manifests) -> jobs with output paths.

A manifest has one entry per line: a path, or a JSON object ``{"input": ..., "output": ...,
<option>: ...}`` whose options (the fields of :class:`JobOptions`) override the batch's for
that file. Relative paths in a manifest are relative to the manifest's folder; a relative
``output`` is relative to the batch output folder, and every output must stay inside that folder
(resolved, symlinks followed) and outside its job state. Blank lines and ``#`` comments are
skipped. Every manifest line becomes a job: the same input may appear on several lines (other
outputs or options); a line whose output another line already takes fails, naming both lines.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import string
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from vsr.errors import ConfigError
from vsr.io.image import IMAGE_SUFFIXES
from vsr.io.output import file_id
from vsr.io.sink import EncodeConfig
from vsr.options import ModelOptions, check_known

VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".mts",
                            ".m2ts", ".flv", ".wmv", ".mpg", ".mpeg", ".nut", ".y4m", ".gif"})
MEDIA_SUFFIXES = VIDEO_SUFFIXES | IMAGE_SUFFIXES
TEMPLATE_FIELDS = ("dir", "stem", "name", "suffix", "ext", "scale", "model", "index")
DEFAULT_TEMPLATE = "{dir}/{stem}{suffix}"
STATE_DIR = ".vsr-batch"  # job state inside the output folder; no output may go there
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True, kw_only=True)
class JobOptions(ModelOptions):
    """Per-file model options (:class:`vsr.options.ModelOptions`: model, scale, precision,
    tile, backend, batch, deflicker; keyword-only) and encoding settings; a manifest line may
    override any of them. The device is the worker's (``BatchConfig.devices``)."""

    codec: str = "libx264"
    crf: int | None = None
    preset: str | None = None
    pix_fmt: str | None = None
    deinterlace: bool = True  # interlaced input (see vsr.io.source.Deinterlacer)
    audio: bool = True  # False: every audio stream left out (vsr batch --no-audio)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.encode  # noqa: B018 - validates crf and pix_fmt now, not in a worker later

    @property
    def encode(self) -> EncodeConfig:
        return EncodeConfig(codec=self.codec, crf=self.crf, preset=self.preset,
                            pix_fmt=self.pix_fmt)

    def fingerprint(self) -> str:
        fields = dataclasses.asdict(self)
        if self.audio:  # the default: the fingerprint of the batches recorded before the field
            del fields["audio"]
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def replace(self, overrides: dict) -> JobOptions:
        """These options with ``overrides`` (a manifest line's); an unknown name is the
        ConfigError a constructor raises (:func:`vsr.options.check_known`)."""
        check_known(type(self), overrides)
        return dataclasses.replace(self, **overrides)


@dataclass(frozen=True)
class Job:
    """One input file and where its output goes; ``error`` is set when it cannot even be
    planned (a glob that matches nothing, a bad manifest line)."""

    input: Path
    output: Path | None
    options: JobOptions = field(default_factory=JobOptions)
    error: str | None = None
    where: str | None = None  # the manifest line (FILE:LINE) it comes from, if any

    def said(self, text: str) -> str:
        """``text`` (a failure) starting with the manifest line, which tells several lines
        of one input apart."""
        return said_at(self.where, text)


def said_at(where: str | None, text: str) -> str:
    """``text`` starting with ``where`` (a manifest's FILE:LINE), once; as it is for None."""
    if where is None or text.startswith(f"{where}:"):
        return text
    return f"{where}: {text}"


@dataclass(frozen=True)
class Entry:
    """An input before naming: the file, the folder it was found under, per-file overrides,
    and ``where`` it was named (``manifest:line`` for a manifest line)."""

    path: Path
    rel_dir: str = ""
    output: str | None = None
    overrides: dict | None = None
    error: str | None = None
    where: str | None = None


def check_template(template: str) -> None:
    """Raise ConfigError unless ``template`` uses only plain ``{field}`` names we know."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"bad output name template {template!r}: {exc}") from exc
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS or spec or conv:
            raise ConfigError(f"output name template field {{{name}}} is not one of "
                              + ", ".join(f"{{{f}}}" for f in TEMPLATE_FIELDS))


def render_name(template: str, entry: Entry, options: JobOptions, index: int) -> Path:
    """The output path relative to the output folder; raises ConfigError."""
    from vsr.models import DEFAULT_MODEL

    p = entry.path
    model = options.model or DEFAULT_MODEL  # the model that runs, by its registry name
    values = {"dir": entry.rel_dir, "stem": p.stem, "name": p.name, "suffix": p.suffix,
              "ext": p.suffix.lstrip("."), "scale": options.scale or model_scale(options.model),
              "model": Path(model).stem if model.endswith(".safetensors") else model,
              "index": index}
    rel = Path(*[part for part in template.format(**values).split("/") if part not in ("", ".")])
    if not rel.parts or ".." in rel.parts:
        raise ConfigError(f"output name {template.format(**values)!r} is not a relative file name")
    return rel


def model_scale(model: str | None) -> int | str:
    """The scale a model upscales by, for naming only ("x" when it cannot be told cheaply)."""
    from vsr.models import DEFAULT_MODEL, REGISTRY
    from vsr.models.checkpoint import read_info

    name = model or DEFAULT_MODEL
    if name in REGISTRY:
        return REGISTRY.get(name).scale
    if name.endswith(".safetensors") and Path(name).is_file():
        try:
            return read_info(name).scale
        except Exception:  # a bad checkpoint fails later, at load, with its own message
            return "x"
    return "x"


def check_input_folder(folder: Path, output_dir: Path) -> None:
    """Raise ConfigError when the input ``folder`` is ``output_dir`` or lies inside it.

    Outputs named like their inputs would replace them, and every later run would take the
    outputs for inputs; a search never takes files from the output folder, so such a folder
    would otherwise yield nothing at all.
    """
    try:
        inside, out = Path(folder).resolve(), Path(output_dir).resolve()
    except (OSError, RuntimeError):  # a loop of links: reported where the path is used
        return
    if inside == out:
        raise ConfigError(f"input folder {folder} is the output folder: outputs named like "
                          "the inputs would replace them; write to another folder (-o)")
    if inside.is_relative_to(out):
        raise ConfigError(f"input folder {folder} is inside the output folder {output_dir}: "
                          "outputs would mix with the inputs; write to another folder (-o)")


def expand_inputs(inputs: list[str], manifests: list[Path], *,
                  exclude: Path | None = None,
                  left_out: list[Path] | None = None) -> list[Entry]:
    """Every input named by ``inputs`` (files, folders searched recursively for media files,
    glob patterns) and by the manifests, in order.

    A file named twice by ``inputs`` (a folder and a glob over it) is one entry; manifest
    lines are never merged or dropped: each is an entry of its own. A search (a folder or a
    pattern) takes no file inside the ``exclude`` folder (the output folder: its files are
    outputs); the files it leaves out are appended to ``left_out``, and a search that
    found media files only there is an entry with an error, never nothing.
    """
    entries: list[Entry] = []
    seen: set[Path] = set()
    for text in inputs:
        skipped: list[Path] = []
        found = _expand_one(text, exclude, skipped)
        if skipped and not found:
            found = [Entry(Path(text), error=f"every media file it names is inside the output "
                                             f"folder {exclude}; write to another folder (-o)")]
        if left_out is not None:
            left_out.extend(skipped)
        for e in found:
            # realpath: a link loop is its own key (Path.resolve raised RuntimeError for it,
            # an internal error), and fails later as a missing input
            key = Path(os.path.realpath(e.path)) if e.error is None else Path(f"error:{e.path}")
            if key not in seen:
                seen.add(key)
                entries.append(e)
    for manifest in manifests:
        entries.extend(read_manifest(manifest))
    return entries


def _expand_one(text: str, exclude: Path | None, skipped: list[Path]) -> list[Entry]:
    path = Path(text)
    skip = exclude.resolve() if exclude is not None else None
    if path.is_dir():
        found = _scan_folder(path, skip, skipped)
        if not found and not skipped:  # named, so expected to hold work: never "0 done"
            return [Entry(path, error="no media files in this folder (searched recursively, "
                                      "hidden files and folders left out)")]
        return found
    if not path.exists() and _GLOB_CHARS & set(text):
        matches = sorted(glob.glob(text, recursive=True))
        if not matches:
            return [Entry(path, error="no file matches this pattern")]
        out: list[Entry] = []
        for m in matches:
            mp = Path(m)
            if mp.is_dir():
                out.extend(_scan_folder(mp, skip, skipped))
            elif _inside(mp, skip):  # named by the pattern: left out whatever its suffix
                skipped.append(mp)
            else:
                out.append(Entry(mp))
        return out
    return [Entry(path)]  # a missing file is reported when its job is planned


def _scan_folder(root: Path, skip: Path | None, skipped: list[Path]) -> list[Entry]:
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if p.suffix.lower() not in MEDIA_SUFFIXES:
            continue
        if _inside(p, skip):
            skipped.append(p)
        else:
            out.append(Entry(p, rel_dir=rel.parent.as_posix().removeprefix(".")))
    return out


def _inside(path: Path, folder: Path | None) -> bool:
    """Whether ``path`` (resolved, links followed) lies in the resolved ``folder``."""
    return folder is not None and path.resolve().is_relative_to(folder)


def read_manifest(path: Path) -> list[Entry]:
    """Entries of a manifest file (UTF-8, a byte order mark allowed, as Notepad saves it);
    a malformed line becomes an entry with an error. A manifest that names nothing (empty,
    comments only) or is not UTF-8 text is a ConfigError."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read manifest {path}: {exc.strerror}") from exc
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ConfigError(f"manifest {path} is UTF-16 text; save it as UTF-8")
    try:
        lines = data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"manifest {path} is not UTF-8 text (line {line}); save it as "
                          "UTF-8") from None
    base = Path(path).parent
    out = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        if not line.startswith("{"):
            out.append(Entry(_under(base, line), where=where))
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            out.append(Entry(Path(where), error=f"bad JSON in manifest: {msg}", where=where))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("input"), str):
            out.append(Entry(Path(where), error="a manifest object needs an \"input\" path",
                             where=where))
            continue
        # "": an unset variable in a generated line, never a default
        if empty := [k for k, v in obj.items() if v == ""]:
            out.append(Entry(Path(where), error=f"{where}: \"{empty[0]}\" is empty",
                             where=where))
            continue
        output = obj.pop("output", None)
        if output is not None and not isinstance(output, str):
            out.append(Entry(Path(where), error="\"output\" must be a path (a string)",
                             where=where))
            continue
        src = _under(base, obj.pop("input"))
        bad = _bad_field(obj)
        if bad is not None:
            out.append(Entry(src, error=f"{where}: {bad}", where=where))
            continue
        # null, where an option takes it: not given, the command line's option stands (it
        # put the registry's default model in place of --model)
        overrides = {k: v for k, v in obj.items() if v is not None}
        out.append(Entry(src, output=output, overrides=overrides, where=where))
    if not out:
        raise ConfigError(f"manifest {path} names no inputs (it holds no line but blanks "
                          "and comments)")
    return out


_JSON_TYPES = {int: "an integer", str: "a string"}


def _bad_field(obj: dict) -> str | None:
    """What is wrong with the first option of a manifest object whose JSON type does not fit
    its :class:`JobOptions` field (``"crf": "abc"``, ``"crf": true``), or None. An int field
    takes an integer only, never a bool or a string; unknown names are left to
    :meth:`JobOptions.replace`, which lists the known ones."""
    hints = typing.get_type_hints(JobOptions)
    for name, value in obj.items():
        if name not in hints:
            continue
        hint = hints[name]
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if value is None and type(None) in allowed:
            continue
        if any(type(value) is t for t in allowed):  # exact: bool is not an int here
            continue
        kinds = " or ".join(_JSON_TYPES.get(t, t.__name__) for t in allowed
                            if t is not type(None))
        return f"option \"{name}\" must be {kinds}, not {json.dumps(value)}"
    return None


def _under(base: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


def make_jobs(entries: list[Entry], output_dir: Path, template: str,
              options: JobOptions) -> list[Job]:
    """Name every entry's output, confined to ``output_dir``.

    An output that resolves outside ``output_dir`` (``..``, an absolute path, a symlink out)
    or into its job state fails its job; so does every later entry whose output an earlier
    one already takes, and every entry whose output is another entry's input (it would
    replace it). Errors of manifest entries start with ``manifest:line``.
    """
    check_template(template)
    root = Path(output_dir).resolve()
    jobs: list[Job] = []
    taken: dict[Path, str] = {}
    read_by: dict[tuple[int, int] | str, str] = {}  # each input file (file_id) -> its entry
    for e in entries:
        if e.error is None:
            read_by.setdefault(file_id(e.path), e.where or str(e.path))
    for index, e in enumerate(entries):
        if e.error is not None:
            jobs.append(Job(e.path, None, options, error=e.error))
            continue
        try:
            opts = options.replace(e.overrides) if e.overrides else options
            rel = Path(e.output) if e.output else render_name(template, e, opts, index)
            out = rel if rel.is_absolute() else output_dir / rel
            key = _confined(out, root)
        except (ConfigError, TypeError) as exc:
            jobs.append(Job(e.path, None, options, error=said_at(e.where, str(exc))))
            continue
        if key in taken:
            jobs.append(Job(e.path, out, opts, error=said_at(
                e.where, f"duplicate output {out}: already the output of {taken[key]}")))
            continue
        target = file_id(out)
        if target in read_by and target != file_id(e.path):  # its own: the run refuses it
            jobs.append(Job(e.path, out, opts, error=said_at(
                e.where, f"output {out} is also an input of this batch ({read_by[target]}): "
                "writing it would replace that input, --overwrite or not")))
            continue
        taken[key] = e.where or str(e.path)
        jobs.append(Job(e.path, out, opts, where=e.where))
    return jobs


def _confined(out: Path, root: Path) -> Path:
    """``out`` resolved; ConfigError unless it is a file name inside ``root`` and outside the
    job state folder."""
    try:
        key = out.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
        raise ConfigError(f"output {out} cannot be resolved: {exc}") from exc
    if key == root or not key.is_relative_to(root):
        raise ConfigError(f"output {out} is outside the output folder {root}")
    if key.is_relative_to(root / STATE_DIR):
        raise ConfigError(f"output {out} is inside the job state folder {root / STATE_DIR}")
    return key
