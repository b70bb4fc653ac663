"""The one owner of the RUN_DIR rules: its layout, how it is opened, its checkpoints and its export folder.

Layout::

    run.json             how the run was made: resolved config, data manifest hash, vocab hash,
                         DATA_DIR path, versions (written before the first step)
    tokenizer.json, vocab.txt, …   the vocabulary
    checkpoints/         tf.train.CheckpointManager: model + optimizer + step + epoch + best val loss
    export/              save_pretrained + tokenizer + poetry_gpt.json (plain transformers loads it)
    logs/                TensorBoard
    samples/             sample poems after each epoch
    trainer_state.json   global_step, epoch, best_val_loss, learning_rate, per-epoch history

Rules (after transformers' run_clm): a RUN_DIR with ``run.json`` resumes; a non-empty
folder without it is refused, with ``--overwrite`` too (which replaces only a run, and never
deletes an input the run reads from inside it); a run whose model shape,
vocabulary or data differ is refused with what differs — never silently restarted.

``open_run`` opens a RUN_DIR to train (the chief), as a cluster's other worker, or to read;
``RunDir.checkpoint`` picks a checkpoint (``latest``, a step, ``ckpt-N``); ``resolve_export``
finds a run's export folder and ``export_meta`` builds its ``poetry_gpt.json`` facts
(``model/export.py`` writes and reads the folder's content).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .config import RunConfig
from .envcheck import versions
from .errors import RunDirError
from .fsutil import atomic_write_json, is_within, read_json

RUN_FILE = "run.json"
STATE_FILE = "trainer_state.json"
EXPORT_DIR = "export"
EXPORT_META = "poetry_gpt.json"  # the export's facts (genre, context, vocab hash, step, 词牌 patterns)
OPEN_MODES = ("train", "worker", "read")


@dataclass(frozen=True)
class RunDir:
    """Paths of a RUN_DIR.

    Args:
        path: the folder.
    """

    path: Path

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def export(self) -> Path:
        return self.path / EXPORT_DIR

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    def exists(self) -> bool:
        return self.run_file.is_file()

    def read_run(self) -> dict:
        try:
            return read_json(self.run_file)
        except (OSError, ValueError):
            raise RunDirError(f"{self.run_file}: unreadable; restore it or start over with --overwrite") from None

    def read_state(self) -> dict:
        if not self.state_file.is_file():
            return {}
        try:
            return read_json(self.state_file)
        except (OSError, ValueError):
            return {}

    def write_state(self, state: dict) -> None:
        atomic_write_json(self.state_file, state)

    def write_run(self, config: RunConfig, manifest, extra: dict | None = None) -> None:
        atomic_write_json(self.run_file, {
            "config": config.to_dict(),
            "data": data_record(manifest),
            "vocab": {"hash": manifest.vocab_hash, "size": manifest.vocab_size},
            "versions": versions(),
            **(extra or {}),
        })

    def checkpoint_steps(self) -> list[int]:
        """Steps of the checkpoints on disk (``checkpoints/ckpt-N.index``), oldest first.

        The files themselves, not TensorFlow's ``checkpoint`` state file (which may be lost).
        """
        found = (p.name[len("ckpt-"):-len(".index")] for p in self.checkpoints.glob("ckpt-*.index"))
        return sorted(int(number) for number in found if number.isdigit())

    def checkpoint_prefix(self, step: int) -> Path:
        """The path TensorFlow names checkpoint ``step`` by (``checkpoints/ckpt-N``)."""
        return self.checkpoints / f"ckpt-{step}"

    def checkpoint(self, ref: str) -> tuple[int, Path]:
        """The checkpoint ``--checkpoint`` names.

        Args:
            ref: ``latest``, a step number (``1200``) or a checkpoint name (``ckpt-1200``).

        Returns:
            ``(step, prefix)``.

        Raises:
            RunDirError: no run here, no checkpoint yet, or no such checkpoint (the available ones listed).
        """
        if not self.exists():
            raise RunDirError(f"--checkpoint needs a RUN_DIR: {self.path} holds no {RUN_FILE}")
        steps = self.checkpoint_steps()
        if not steps:
            raise RunDirError(f"--checkpoint {ref}: {self.checkpoints} holds no checkpoint yet")
        name = str(ref).strip()
        if name == "latest":
            return steps[-1], self.checkpoint_prefix(steps[-1])
        digits = name[len("ckpt-"):] if name.startswith("ckpt-") else name
        if not digits.isdigit() or int(digits) not in steps:
            raise RunDirError(f"--checkpoint {ref}: no such checkpoint in {self.checkpoints}; "
                              f"available: latest, {', '.join(str(s) for s in steps)}")
        return int(digits), self.checkpoint_prefix(int(digits))

    def export_step(self) -> int | None:
        """The global step recorded in ``export/poetry_gpt.json`` (None without an export)."""
        try:
            return read_json(self.export / EXPORT_META).get("global_step")
        except (OSError, ValueError, AttributeError):
            return None


def data_record(manifest) -> dict:
    """What ``run.json`` records (``data``) of the DATA_DIR a run trains on.

    Args:
        manifest: the DATA_DIR's ``Manifest``.
    """
    return {"path": str(Path(manifest.path).resolve()), "hash": manifest.hash,
            "genre": manifest.genre, "genres": manifest.data.get("genres", {}),
            "cipai": manifest.data.get("cipai") or {}}  # 词牌 patterns, copied into the export


def export_meta(data: dict, n_ctx: int, step: int | None = None, epoch: int | None = None,
                vocab_hash: str | None = None) -> dict:
    """The facts of a run's weights that an export's ``poetry_gpt.json`` records (a checkpoint loaded
    for generation carries the same), so that ``generate`` needs neither the RUN_DIR nor the DATA_DIR.

    Args:
        data: the run's data record (``data_record``, or ``run.json``'s ``data``).
        n_ctx: the model's context.
        step: the global step of the weights; left out when None.
        epoch: the epoch of the weights; left out when None.
        vocab_hash: the vocabulary's hash; left out when None (``save_export`` adds the saved one's).
    """
    meta = {"genre": data.get("genre"), "genres": data.get("genres", {}), "n_ctx": n_ctx,
            "data_hash": data.get("hash"), "cipai": data.get("cipai") or {}}
    given = {"vocab_hash": vocab_hash, "global_step": step, "epoch": epoch}
    return {**meta, **{key: value for key, value in given.items() if value is not None}}


def export_swap(export: str | os.PathLike) -> tuple[Path, Path]:
    """The folders ``save_export`` replaces ``export`` through: the new copy being written
    (``export.tmp``) and the old one while the fallback swap (no atomic exchange) moves it aside
    (``export.old``).

    Args:
        export: the export folder.
    """
    export = Path(export)
    return export.with_name(export.name + ".tmp"), export.with_name(export.name + ".old")


def resolve_export(path: str | os.PathLike) -> Path:
    """The export folder of a RUN_DIR, or ``path`` itself when it is an export folder.

    Args:
        path: a RUN_DIR or an export folder.

    Raises:
        RunDirError: no such folder, or no export in it.
    """
    p = Path(path)
    if not p.exists():
        raise RunDirError(f"{p}: no such folder; pass a RUN_DIR written by `poetry-gpt train` or its export/")
    # export.old exists only for an instant while the fallback swap (no atomic exchange) replaces export/
    for candidate in (p / EXPORT_DIR, p, export_swap(p / EXPORT_DIR)[1]):
        if (candidate / "config.json").is_file() and (candidate / "vocab.txt").is_file():
            return candidate
    raise RunDirError(f"{p}: no model export here (config.json + vocab.txt); train first with "
                      f"`poetry-gpt train --run {p}` or pass the run's export/ folder")


def open_run(path: str | os.PathLike, mode: str = "read", overwrite: bool = False, own_entries: tuple[str, ...] = (),
             inputs: Sequence[tuple[str, str | os.PathLike]] = ()) -> tuple[RunDir, bool]:
    """Open a RUN_DIR for ``train`` (the process that owns it), for a cluster's other worker, or to read.

    Args:
        path: the RUN_DIR.
        mode: ``train``: refuse a folder training would take from the user, clear it with ``overwrite``,
            create it and its sub-folders (``_open_for_training``); ``worker``: a non-chief worker's
            view, read-only, nothing created or deleted; ``read``: an existing run (``eval``), refused
            unless its ``run.json`` records the data and vocabulary.
        overwrite: the run starts over (``train``: deleting what the folder holds, but never an input;
            ``worker``: the chief clears the folder).
        own_entries: (``train``) names inside the folder that belong to the run although it has no run.json
            yet (``pipeline`` prepares its data in ``RUN_DIR/data``).
        inputs: (``train``) ``(option, path)`` of what the run reads (``--data``, ``--init-from``,
            ``pipeline``'s RAW); the folder entries that hold one are kept in place.

    Returns:
        ``(run_dir, resuming)``: resuming is True when the folder holds an earlier run to continue
        (always, for ``read``).
    """
    if mode == "train":
        return _open_for_training(path, overwrite, own_entries, inputs)
    run = RunDir(Path(path))
    if mode == "worker":
        _refuse_file(run)
        return run, run.exists() and not overwrite
    if mode != "read":
        raise ValueError(f"open_run: mode must be one of {', '.join(OPEN_MODES)}, not {mode!r}")
    if not run.path.is_dir():
        raise RunDirError(f"--run {run.path}: no such RUN_DIR; train one with `poetry-gpt train --data DATA_DIR --run {run.path}`")
    if not run.exists():
        raise RunDirError(f"--run {run.path}: no {RUN_FILE}, so not a poetry_gpt RUN_DIR; pass a folder written by `poetry-gpt train`")
    info = run.read_run()
    if not isinstance(info, dict) or "data" not in info or "vocab" not in info:
        raise RunDirError(f"{run.run_file}: lacks the data/vocab records; restore it or retrain")
    return run, True


def _refuse_file(run: RunDir) -> None:
    """Refuse a RUN_DIR path that names a file."""
    if run.path.exists() and not run.path.is_dir():
        raise RunDirError(f"--run: {run.path} is a file, not a folder; choose another path")


def _open_for_training(path: str | os.PathLike, overwrite: bool, own_entries: tuple[str, ...],
                       inputs: Sequence[tuple[str, str | os.PathLike]]) -> tuple[RunDir, bool]:
    """``open_run(mode="train")``: prepare a RUN_DIR for the process that owns it.

    Args:
        path: the RUN_DIR.
        overwrite: start over, deleting what the folder holds (only a run's folder: see ``check_run_target``),
            but never an input.
        own_entries: names inside the folder that belong to the run although it has no run.json yet.
        inputs: ``(option, path)`` of what the run reads; the folder entries that hold one are kept in place.

    Returns:
        ``(run_dir, resuming)``: resuming is True when the folder holds an earlier run.
    """
    run = RunDir(Path(path))
    keep = check_run_target(run.path, overwrite, own_entries, inputs)
    if overwrite and run.path.exists():
        try:
            for entry in run.path.iterdir():
                if entry.name not in keep:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        except OSError as exc:
            raise RunDirError(f"--run {run.path}: --overwrite cannot delete {exc.filename or 'its contents'}: "
                              f"{exc.strerror or exc}; choose a writable folder") from None
    try:
        run.path.mkdir(parents=True, exist_ok=True)
        for sub in (run.checkpoints, run.logs, run.samples):
            sub.mkdir(exist_ok=True)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(run.path) else ""
        raise RunDirError(f"--run {run.path}: cannot create the run folder{where}: {exc.strerror or exc}; "
                          "choose a writable folder") from None
    remove_stale_temporaries(run)
    return run, run.exists()


# what a run writes at the top of its RUN_DIR: an input there would be replaced by the new run
RUN_ENTRIES = (RUN_FILE, STATE_FILE, "checkpoints", EXPORT_DIR, "logs", "samples", "tokenizer.json", "vocab.txt",
                "tokenizer_config.json", "special_tokens_map.json")


def check_run_target(path: str | os.PathLike, overwrite: bool, own_entries: tuple[str, ...] = (),
                     inputs: Sequence[tuple[str, str | os.PathLike]] = ()) -> tuple[str, ...]:
    """Refuse a RUN_DIR that training (with ``--overwrite``: emptying it) would take from the user.

    Nothing is changed. Refused: a file; the folder being an input; a non-empty folder without
    ``run.json`` (with or without ``overwrite``: ``--overwrite`` replaces only a run); with
    ``overwrite``, an input inside a part of the folder the new run rewrites (``export/`` …).
    An input elsewhere in the folder (``RUN_DIR/data``, ``RUN_DIR/raw.txt``) stays in place.

    Args:
        path: the RUN_DIR.
        overwrite: the run starts over.
        own_entries: names that belong to the run although it has no run.json yet.
        inputs: ``(option, path)`` of what the run reads.

    Returns:
        The names of the folder's entries ``--overwrite`` must keep: ``own_entries`` and those holding inputs.
    """
    run = RunDir(Path(path))
    _refuse_file(run)
    keep = list(own_entries)
    for option, given in inputs:
        if is_within(run.path, given):
            if is_within(given, run.path):
                raise RunDirError(f"--run: {run.path} is the input {option} {given}; choose another --run")
            continue  # the run lies inside an input folder: training writes only below the run
        if not is_within(given, run.path):
            continue
        top = Path(given).resolve().relative_to(run.path.resolve()).parts[0]
        if overwrite and top in RUN_ENTRIES:
            raise RunDirError(f"{option} {given}: it is inside --run {run.path}, whose {top} --overwrite replaces; "
                              f"copy it out of the run first, or choose another --run")
        keep.append(top)
    refuse_foreign(run.path, tuple(keep))
    return tuple(keep)


def remove_stale_temporaries(run: RunDir) -> None:
    """Delete what a killed ``train`` left half-written: TensorFlow's ``ckpt-N_temp/`` folders and
    ``checkpoint.tmp…`` files, our ``*.tmp`` files and ``export.tmp/``.

    None of them is ever read (a checkpoint counts once TensorFlow's ``checkpoint`` file lists it;
    our files are renamed into place when complete), so this only reclaims space. Call it only
    from the process that owns the RUN_DIR, before it writes anything.
    """
    stale = [*run.checkpoints.glob("*_temp"), *run.checkpoints.glob("checkpoint.tmp*"),
             *run.path.glob("*.tmp"), *run.samples.glob("*.tmp")]
    for entry in stale:
        try:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except OSError:
            pass


# what ``open_run`` and ``train`` create before run.json is written: a run stopped that early
# (Ctrl-C while TensorFlow starts) leaves only these, and the folder still counts as empty
_SCAFFOLD_DIRS = ("checkpoints", "logs", "samples")
_SCAFFOLD_FILES = (".write-test", RUN_FILE + ".tmp")  # run.json.tmp: killed while writing run.json


def refuse_foreign(path: str | os.PathLike, own_entries: tuple[str, ...] = ()) -> None:
    """Refuse a non-empty folder that holds no run (``--overwrite`` does not replace it either).

    Args:
        path: the RUN_DIR.
        own_entries: names that belong to the run although it has no run.json yet.
    """
    run = RunDir(Path(path))
    if run.path.is_dir() and not run.exists():
        foreign = [e.name for e in sorted(run.path.iterdir()) if _foreign(e, own_entries)]
        if foreign:
            raise RunDirError(f"--run: {run.path} is not empty ({', '.join(foreign[:3])}"
                              f"{', …' if len(foreign) > 3 else ''}) and holds no {RUN_FILE} (not a poetry_gpt run); "
                              "--overwrite replaces only a run: choose an empty folder or another path")


def _foreign(entry: Path, own_entries: tuple[str, ...]) -> bool:
    """Whether a RUN_DIR entry was put there by someone else than a starting run."""
    if entry.name in own_entries or entry.name in _SCAFFOLD_FILES:
        return False
    if entry.name in _SCAFFOLD_DIRS and entry.is_dir() and not any(entry.iterdir()):
        return False
    return True


def check_resume_compatible(run: RunDir, config: RunConfig, manifest) -> list[str]:
    """Refuse to resume a run with another model shape, vocabulary or data; list allowed changes.

    Args:
        run: the RUN_DIR being resumed.
        config: the configuration asked for now.
        manifest: the DATA_DIR manifest given now.

    Returns:
        Human-readable training-setting changes (allowed, e.g. more epochs).
    """
    old = run.read_run()
    old_cfg = RunConfig.from_dict(old["config"])
    problems = []
    if old_cfg.model != config.model:
        diffs = [f"{k} {getattr(old_cfg.model, k)} → {getattr(config.model, k)}"
                 for k in old_cfg.model.__dataclass_fields__ if getattr(old_cfg.model, k) != getattr(config.model, k)]
        problems.append("model shape differs (" + ", ".join(diffs) + ")")
    if old["vocab"]["hash"] != manifest.vocab_hash:
        problems.append(f"vocabulary differs ({old['vocab']['size']} tokens in the run, {manifest.vocab_size} in the data)")
    if old["data"]["hash"] != manifest.hash:
        problems.append(f"data differs (the run was trained on {old['data']['path']})")
    if old_cfg.tune != config.tune:
        problems.append(f"fine-tuning differs (--tune {old_cfg.tune.describe()} → {config.tune.describe()})")
    if problems:
        raise RunDirError(f"--run {run.path}: cannot resume: " + "; ".join(problems) +
                          "; use the original --data/--config, another --run, or --overwrite to start over")
    return [f"{k} {getattr(old_cfg.train, k)} → {getattr(config.train, k)}"
            for k in old_cfg.train.__dataclass_fields__ if getattr(old_cfg.train, k) != getattr(config.train, k)]


# what identifies a fine-tuning base: its weights and its config (``base_record``)
BASE_FILES = ("config.json", "tf_model.h5", "pytorch_model.bin", "model.safetensors")


def base_record(path: str | os.PathLike) -> dict:
    """What a run records of its ``--init-from`` folder: the path and a content hash (sha256 of the weight
    file(s) and config.json, each file's own hash kept so that a change can be named).

    Args:
        path: the base folder.
    """
    import hashlib

    folder = Path(path)
    names = sorted({*(n for n in BASE_FILES if (folder / n).is_file()), *(p.name for p in folder.glob("*.safetensors"))})
    files = {}
    for name in names:
        digest = hashlib.sha256()
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        files[name] = digest.hexdigest()
    whole = hashlib.sha256("".join(f"{n}\0{h}\n" for n, h in files.items()).encode()).hexdigest()
    return {"path": str(folder.resolve()), "hash": whole, "files": files}


def check_base(run: RunDir, recorded: dict, path: str | os.PathLike) -> dict:
    """Refuse a base folder whose content is not the one ``run`` was tuned from; its record when it is.

    Args:
        run: the RUN_DIR being resumed.
        recorded: the base as ``run.json`` records it (``base_record``).
        path: the base folder to use now (the recorded path, or ``--init-from``).

    Raises:
        RunDirError: the folder is gone, or which files differ.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise RunDirError(f"--run {run.path}: the base it was tuned from, {folder}, is gone (no config.json); put it "
                          "back, or pass its copy with --init-from")
    now = base_record(folder)
    if now["hash"] != recorded.get("hash"):
        old, new = recorded.get("files", {}), now["files"]
        changed = ([f"{n} changed" for n in sorted(set(old) & set(new)) if old[n] != new[n]]
                   + [f"{n} missing" for n in sorted(set(old) - set(new))]
                   + [f"{n} added" for n in sorted(set(new) - set(old))])
        raise RunDirError(f"--run {run.path}: cannot resume: the base {folder} is not the one the run was tuned from "
                          f"({', '.join(changed) or 'content differs'}); restore that base, or pass its copy with "
                          "--init-from")
    return now


def resolve_config(path: str | os.PathLike, preset: str | None, model_overrides: dict, train_overrides: dict,
                   overwrite: bool = False, tune_overrides: dict | None = None, timed: bool = False) -> RunConfig:
    """The configuration a ``train`` call runs with.

    A new run starts from ``preset`` (default ``small``); a resumed run starts from the
    configuration stored in its ``run.json`` (so no flag has to be repeated), and a
    ``preset`` given then must have the same model shape. Overrides apply last. A new ``--tune`` run without
    ``--learning-rate`` trains at the preset's rate times ``tune.learning_rate_scale`` (``config.TUNE_LR_SCALES``);
    the run records the rate it got, so a resume keeps it. A new ``--max-time`` run without ``--schedule`` decays
    with ``config.TIMED_SCHEDULE`` (``wsd``): measured, it beat both a cosine over the budget and no decay at all.

    Args:
        path: the RUN_DIR.
        preset: the ``--config`` name, or None.
        model_overrides: model fields set on the command line.
        train_overrides: training fields set on the command line.
        overwrite: the run starts over (the stored configuration is ignored).
        tune_overrides: fine-tuning fields (``--tune`` and its sizes) set on the command line.
        timed: the run trains to a time budget (``--max-time``).
    """
    from .config import TIMED_SCHEDULE, config_from_preset

    run = RunDir(Path(path))
    if run.exists() and not overwrite:
        base = RunConfig.from_dict(run.read_run()["config"])
        if preset is not None:
            asked = config_from_preset(preset)
            if asked.model != base.model:
                raise RunDirError(f"--config {preset}: {run.path} was trained with preset {base.preset!r} "
                                  f"({base.model.n_layer} layers, width {base.model.n_embd}, context {base.model.n_ctx}); "
                                  "drop --config to resume it, or use another --run / --overwrite")
        return base.replace(model=model_overrides, train=train_overrides, tune=tune_overrides)
    config = config_from_preset(preset or "small").replace(model=model_overrides, train=train_overrides,
                                                           tune=tune_overrides)
    if timed and "schedule" not in train_overrides:
        config = config.replace(train={"schedule": TIMED_SCHEDULE})
    if "learning_rate" in train_overrides:
        return config
    return config.replace(train={"learning_rate": config.train.learning_rate * config.tune.learning_rate_scale})


def data_manifest(run: RunDir, data_dir: str | os.PathLike | None = None):
    """The DATA_DIR manifest to use with a run: ``data_dir`` if given, else the one recorded in ``run.json``.

    Args:
        run: the RUN_DIR.
        data_dir: an explicit DATA_DIR (``--data``), or None.

    Raises:
        DataDirError: the DATA_DIR is missing or incomplete (naming run.json when it was the recorded one).
    """
    from .data.manifest import load_manifest
    from .errors import DataDirError

    if data_dir is not None:
        return load_manifest(data_dir)
    try:
        return load_manifest(run.read_run()["data"]["path"])
    except DataDirError as exc:
        raise DataDirError(f"{exc} (the DATA_DIR recorded in {run.run_file}; pass --data to use another "
                           "copy of the same data)") from None
