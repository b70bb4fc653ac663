"""The training flow: ``train()`` opens the run, reads the data, builds the model, restores, fits, reports.

* A checkpoint (``tf.train.CheckpointManager``) holds model, optimizer (moments and step),
  epoch and best validation loss; resuming restores it, checks the restore matched, and
  continues the data stream at the same batch (see ``datasets.train_dataset``).
* What each epoch end writes, and the NaN guard, are the run callback's (``callbacks.py``); the
  model, loss, optimizer and precision are ``trainer.py``'s.
* ``max_time`` (``--max-time``): the decay is planned to end at the deadline (``budget.py``), the plan
  kept in a checkpointed variable; ``--epochs`` is then no limit, and the run ends with a final
  validation, checkpoint, export and samples at the step reached.
* Ctrl-C saves a checkpoint and refreshes ``export/`` at the step reached.
* Fine-tuning (``--init-from BASE``): ``run.json`` records the base (path and content hash,
  ``run_dir.base_record``); a ``--tune`` run's checkpoints hold only the tuned variables, so its resume
  reloads the base from there and refuses one whose content changed (``run_dir.check_base``).
* The library prints nothing: progress lines go to ``echo`` (the CLI passes ``click.echo``).
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..config import RunConfig
from ..data.datasets import batches_per_pass
from ..data.manifest import Manifest
from ..data.vocab import CharVocab
from ..errors import OptionError, RunDirError
from ..run_dir import (RunDir, base_record, check_base, check_resume_compatible, data_manifest, data_record,
                       export_meta, open_run)
from . import budget as _budget
from .budget import TimeBudget, format_duration
from .cores import CoreLayout, use_cores
from .distribute import check_global_batch, check_same_start, checkpoint_managers, is_chief, make_strategy
from .schedule import run_lr
from .trainer import (Training, TrainingDiverged, build_training, global_step, require_base, resolve_precision,
                      set_precision, training_data, validation_data)

__all__ = ["TrainResult", "TrainingDiverged", "set_precision", "train"]

PLAN_KEY = "lr_plan/.ATTRIBUTES/VARIABLE_VALUE"  # the decay plan's name in a checkpoint


@dataclass
class TrainResult:
    """What a ``train`` call did.

    Args:
        run_dir: the RUN_DIR.
        global_step: steps done in total.
        epoch: epochs done in total.
        history: per-epoch records (loss, val_loss, …) of this call.
        restored_step: the step resumed from (0 for a fresh run).
        seconds: wall time of fitting.
        tokens_per_second: trained tokens per second over this call (all packed tokens are useful).
        budget: with ``max_time``: the budget, planned and reached steps (``TimeBudget.record``); else None.
    """

    run_dir: Path
    global_step: int
    epoch: int
    history: list
    restored_step: int
    seconds: float
    tokens_per_second: float
    budget: dict | None = None


def _no_echo(line: str) -> None:
    """Drop a progress line: the library prints nothing unless the caller passes ``echo``."""


def _restores_precision_policy(run):
    """Decorate ``train``: the Keras precision policy it sets (process-wide) is put back as it was when it
    returns or raises, so later models of the caller's process are built as they would have been without it.

    Args:
        run: the function to wrap.
    """
    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        from ..envcheck import require_compatible

        require_compatible()  # before TensorFlow loads: an unfit install is one clear line, not an ImportError
        import tf_keras

        before = tf_keras.mixed_precision.global_policy()
        try:
            return run(*args, **kwargs)
        finally:
            tf_keras.mixed_precision.set_global_policy(before)
    return wrapper


@_restores_precision_policy
def train(data_dir: str | os.PathLike | None, run_dir: str | os.PathLike, config: RunConfig,
          overwrite: bool = False, init_from: str | os.PathLike | None = None,
          echo: Callable[[str], None] = _no_echo, verbose: int = 0, own_entries: tuple[str, ...] = (),
          inputs: Sequence[tuple[str, str | os.PathLike]] = (), max_time: float | None = None,
          started: float | None = None, sample_poems: Callable[..., list[str]] | None = None) -> TrainResult:
    """Train (or resume training) a poem model. The Keras precision policy it sets for the run is put back as it
    was when it returns (``_restores_precision_policy``).

    Args:
        data_dir: a DATA_DIR from ``prepare`` (None on resume: the run's recorded DATA_DIR).
        run_dir: the RUN_DIR to create or continue.
        config: the resolved configuration (preset + overrides, or the stored one on resume).
        overwrite: start over in a non-empty RUN_DIR.
        init_from: an HF GPT-2 folder (TF weights or safetensors) to fine-tune from.
        echo: where progress lines go (default: nowhere; the CLI passes ``click.echo``).
        verbose: Keras progress-bar verbosity (0 silent, 1 bar, 2 one line per epoch).
        own_entries: entries of a new RUN_DIR that are not foreign (``pipeline``'s ``data/``).
        inputs: more ``(option, path)`` inputs (``pipeline``'s RAW files) that ``--overwrite`` keeps in
            place like ``data_dir`` and ``init_from`` when they lie inside RUN_DIR.
        max_time: a time budget in seconds (``--max-time``): train until it is spent, the decay planned to
            end there (``--epochs`` is then no limit); None: train ``--epochs``.
        started: ``budget.clock()`` when the budget began (default: now); ``pipeline`` counts its prepare.
        sample_poems: writes the sample poems of each epoch end (``samples/``), called as
            ``sample_poems(lm, vocab, titles, genre=, n_ctx=, seed=)``; the CLI passes
            ``poetry_gpt.generate.epoch.sample_poems``. None: no samples (training never imports the
            later generate stage itself).
    """
    started = _budget.clock() if started is None else started
    _check_max_time(max_time, config.train.strategy)
    from .callbacks import RunCallback  # here, not at the top: importing the train stage does not import TensorFlow

    chief = is_chief(config.train.strategy)  # a non-chief worker of a cluster only reads RUN_DIR (distribute.py)
    run, resuming, manifest, vocab, changes = _open_run(data_dir, run_dir, config, overwrite, init_from,
                                                        own_entries, inputs, chief)
    init_from, base = _tune_base(run, resuming, config, init_from)
    precision = resolve_precision(config.train.precision)
    set_precision(precision)
    strategy = make_strategy(config.train.strategy)
    t, n_ctx = config.train, config.model.n_ctx
    cores = use_cores(t.batch_split, t.batch_size, strategy)  # before the runtime starts: it sets the threads
    steps_per_epoch = _steps_per_epoch(manifest, config, strategy)
    total_steps = steps_per_epoch * t.epochs
    # a run whose length changes lays its decay over a plan variable; one trained so keeps it on resume
    use_plan = max_time is not None or (resuming and _has_lr_plan(run.checkpoints))
    training = build_training(config, vocab, strategy, total_steps, precision, init_from, use_plan,
                              manifest.base_vocab_size, cores.parts)
    # a non-chief saves into a temporary folder (deleted at exit) but resumes from the chief's checkpoints
    manager, source = checkpoint_managers(training.saved, run.checkpoints, chief, t.keep_checkpoints)
    restored_step = (_resume(run, source, training, config, total_steps, changes, chief, echo) if resuming else 0)
    check_same_start(strategy, restored_step)  # a cluster's workers must all start from the chief's checkpoint
    if chief:
        run.write_run(config, manifest, {"precision": precision, "steps_per_epoch": steps_per_epoch,
                                         "batch_parts": cores.parts, "threads_per_part": cores.threads, **base})
        vocab.save(run.path)

    lm = training.lm
    start_epoch = restored_step // steps_per_epoch
    if start_epoch >= t.epochs and max_time is None:
        echo(f"Nothing to do: {run.path} has already trained {start_epoch} of --epochs {t.epochs} epoch(s); "
             "pass a larger --epochs to train more.")
        if chief and run.export_step() != restored_step:
            from ..model.export import save_export

            save_export(lm, vocab, run.export, export_meta(data_record(manifest), n_ctx, restored_step, start_epoch),
                        tuning=training.tuning)
            echo(f"export/ brought up to step {restored_step}.")
        return TrainResult(run.path, restored_step, start_epoch, [], restored_step, 0.0, 0.0)

    state = run.read_state() if resuming else {}
    history = [h for h in state.get("history", []) if (h.get("global_step") or 0) <= restored_step]
    meta = export_meta(data_record(manifest), n_ctx)
    budget = (TimeBudget(max_time, started, restored_step, steps_per_epoch,
                         -(-manifest.poems("valid") // t.batch_size))
              if max_time is not None else None)
    callback = RunCallback(run, manager, training, vocab, config, total_steps, steps_per_epoch, history, meta,
                           chief, echo, budget=budget, sample_poems=sample_poems)
    echo(_announce(training, config, manifest, precision, strategy, steps_per_epoch, budget, cores))
    if base["base"] is not None:
        trainable, total = training.parameter_counts()
        echo(f"Fine-tuning {base['base']['path']} with --tune {config.tune.describe()}: trainable {trainable:,} / "
             f"total {total:,} parameters ({100 * trainable / max(total, 1):.2f}%), peak learning rate "
             f"{config.train.learning_rate:.3g}.")

    def fit(first_epoch: int, end_epoch: int, steps: int, step: int) -> int:
        """Keras ``fit`` from global step ``step`` over epochs [first_epoch, end_epoch); the step reached."""
        training.trainer.fit(training_data(manifest, config, vocab, strategy, start_step=step), epochs=end_epoch,
                             initial_epoch=first_epoch, steps_per_epoch=steps, validation_data=val,
                             callbacks=[callback], verbose=verbose)
        return training.step()

    val = validation_data(manifest, config, vocab, strategy)
    start = time.perf_counter()
    try:
        step = _fit_epochs(fit, callback, restored_step, steps_per_epoch, t.epochs, budget)
    except KeyboardInterrupt:
        callback.save_now("interrupted")
        callback.export_now("interrupted")
        raise
    return _finish(run, training, callback, config, restored_step, step, time.perf_counter() - start, budget, chief)


def _open_run(data_dir, run_dir, config: RunConfig, overwrite: bool, init_from, own_entries, inputs,
              chief: bool) -> tuple[RunDir, bool, Manifest, CharVocab, list[str]]:
    """Read the DATA_DIR, then open RUN_DIR for training; ``(run, resuming, manifest, vocab, changes on resume)``.

    Args:
        data_dir: the DATA_DIR (None: the run's recorded one).
        run_dir: the RUN_DIR.
        config: the run configuration.
        overwrite: start over in a non-empty RUN_DIR.
        init_from: the fine-tuning folder, or None.
        own_entries: entries of a new RUN_DIR that are not foreign.
        inputs: more ``(option, path)`` inputs that ``--overwrite`` keeps in place.
        chief: whether this process writes RUN_DIR (a non-chief worker only reads it).
    """
    # everything is read before --overwrite empties RUN_DIR (which keeps inputs that lie inside it)
    new_run = overwrite or not RunDir(Path(run_dir)).exists()
    if data_dir is None and new_run:
        raise RunDirError(f"--data: needed for a new run ({run_dir} holds no run yet"
                          f"{', and --overwrite starts one' if overwrite else ''})")
    if new_run:
        require_base(config, init_from)
    manifest = data_manifest(RunDir(Path(run_dir)), data_dir)
    vocab = manifest.load_vocab()
    given = [("--data", data_dir), ("--init-from", init_from), *inputs]
    inputs = [(option, path) for option, path in given if path is not None]
    run, resuming = open_run(run_dir, "train" if chief else "worker", overwrite, own_entries, inputs)
    changes = check_resume_compatible(run, config, manifest) if resuming else []
    if chief:
        _check_disk_space(run.path, config)
    return run, resuming, manifest, vocab, changes


def _tune_base(run: RunDir, resuming: bool, config: RunConfig, init_from) -> tuple[str | None, dict]:
    """The base folder to load, and what ``run.json`` records of it (``init_from``, ``base``).

    A new run records ``--init-from`` and its content hash. A resumed ``--tune`` run (other than full:
    its checkpoints hold only the tuned variables) reloads the recorded base, or ``--init-from`` when given,
    refused when its content is not the recorded one; a full one keeps its record (its checkpoints hold
    every weight).

    Args:
        run: the RUN_DIR.
        resuming: whether the run continues.
        config: the run configuration.
        init_from: ``--init-from``, or None.
    """
    if not resuming:
        return init_from, {"init_from": str(init_from) if init_from else None,
                           "base": base_record(init_from) if init_from else None}
    old = run.read_run()
    recorded = {"init_from": old.get("init_from"), "base": old.get("base")}
    if config.tune.method == "full":
        return init_from, recorded
    if not recorded["base"]:
        raise RunDirError(f"{run.run_file}: records no base for this --tune {config.tune.method} run; restore "
                          "run.json, or start over with --overwrite")
    path = init_from or recorded["base"]["path"]
    check_base(run, recorded["base"], path)
    return str(path), recorded


def _steps_per_epoch(manifest: Manifest, config: RunConfig, strategy) -> int:
    """``--steps-per-epoch``, or one pass over the training split; refuses a split smaller than one batch.

    Args:
        manifest: the DATA_DIR's manifest.
        config: the run configuration.
        strategy: the ``tf.distribute`` strategy (the batch must split over its replicas).
    """
    t, n_ctx = config.train, config.model.n_ctx
    check_global_batch(strategy, t.batch_size)
    per_pass = batches_per_pass(manifest, t.batch_size, n_ctx)
    if per_pass < 1:
        raise RunDirError(f"--data {manifest.path}: the training split ({manifest.poems('train')} poems, "
                          f"{manifest.tokens('train')} characters) is smaller than one batch of {t.batch_size}×{n_ctx} "
                          "tokens; add poems or lower --batch-size")
    return t.steps_per_epoch or per_pass


def _resume(run: RunDir, source, training: Training, config: RunConfig, total_steps: int, changes: list[str],
            chief: bool, echo: Callable[[str], None]) -> int:
    """Restore the run's newest readable checkpoint into ``training``; the step resumed from (0 without one).

    Args:
        run: the RUN_DIR.
        source: the CheckpointManager whose checkpoints are resumed from (the chief's).
        training: the model, optimizer and counters to restore into.
        config: the run configuration.
        total_steps: the run's total steps (for the learning rate reported).
        changes: the settings changed on resume (reported).
        chief: whether this process writes RUN_DIR.
        echo: where progress lines go.
    """
    ckpt_dir = str(run.checkpoints)
    # the manager lists checkpoints from its state file; if that file is lost, look at the files themselves
    candidates = list(source.checkpoints) or _checkpoint_files(Path(ckpt_dir))
    if not candidates:
        recorded = run.read_state().get("global_step") or 0
        if chief and recorded > 0:
            raise RunDirError(f"--run {run.path}: trainer_state.json records step {recorded} but {run.checkpoints} "
                              "holds no checkpoint; put the checkpoints back or start over with --overwrite")
        echo(f"{run.path} holds no checkpoint yet; starting at step 0.")
        return 0
    plan = training.plan
    restored_step, restored_path = _restore(training.checkpoint, candidates, ckpt_dir, training.optimizer, echo,
                                            partial=plan is not None)
    if plan is not None:
        _restore_plan(plan, restored_path)
    lr = run_lr(config.train, restored_step, total_steps, plan)
    echo(f"Resumed {run.path} from {Path(restored_path).name}: step {restored_step}, "
         f"epoch {int(training.epoch.numpy())}, best val loss {float(training.best_val.numpy()):.4f}, "
         f"learning rate {lr:.3g}.")
    if changes:
        echo("Changed on resume: " + "; ".join(changes) + ".")
    return restored_step


def _announce(training: Training, config: RunConfig, manifest: Manifest, precision: str, strategy,
              steps_per_epoch: int, budget: TimeBudget | None, cores: CoreLayout) -> str:
    """The line that says what is about to be trained, and for how long."""
    from ..model.gpt2 import count_parameters

    t, m = config.train, config.model
    length = (f"{t.epochs} epoch(s) × {steps_per_epoch} steps" if budget is None else
              f"for {format_duration(budget.seconds)} (until "
              f"{time.strftime('%H:%M:%S', time.localtime(budget.deadline_wall))}"
              f", the decay planned to end there), epochs of {steps_per_epoch} steps")
    return (f"Training {count_parameters(training.lm) / 1e6:.2f}M parameters ({m.n_layer} layers, width {m.n_embd}, "
            f"context {m.n_ctx}) on {manifest.poems('train')} poems: {length} of "
            f"{t.batch_size}×{m.n_ctx} tokens, {precision}, {strategy.num_replicas_in_sync} replica(s), "
            f"{cores.describe()}.")


def _fit_epochs(fit: Callable[[int, int, int, int], int], callback, restored_step: int, steps_per_epoch: int,
                epochs: int, budget: TimeBudget | None) -> int:
    """Call ``fit(first_epoch, end_epoch, steps, step)`` over what is left to train; the step reached.

    Args:
        fit: one Keras ``fit`` call from global step ``step``; returns the step reached.
        callback: the run callback (it tells whether training diverged).
        restored_step: the step the run starts from.
        steps_per_epoch: steps per epoch.
        epochs: ``--epochs`` (no limit with a budget).
        budget: the ``--max-time`` budget, or None.
    """
    step = restored_step
    if budget is not None:
        # one epoch a call (the next starts where this one stopped) until the budget stops one
        budget.begin(_budget.clock())
        first = True
        while first or not (callback.diverged or budget.should_stop(step, _budget.clock())):
            first = False
            step = fit(step // steps_per_epoch, step // steps_per_epoch + 1,
                       steps_per_epoch - step % steps_per_epoch, step)
        return step
    # a run stopped inside an epoch first finishes that epoch's remaining steps
    start_epoch = restored_step // steps_per_epoch
    segments = []
    if restored_step % steps_per_epoch:
        segments.append((start_epoch, start_epoch + 1, steps_per_epoch - restored_step % steps_per_epoch))
        start_epoch += 1
    if start_epoch < epochs:
        segments.append((start_epoch, epochs, steps_per_epoch))
    for first_epoch, end_epoch, steps in segments:
        step = fit(first_epoch, end_epoch, steps, step)
        if callback.diverged:
            break
    return step


def _finish(run: RunDir, training: Training, callback, config: RunConfig, restored_step: int, step: int,
            seconds: float, budget: TimeBudget | None, chief: bool) -> TrainResult:
    """Record the budget's end, refuse a diverged run (``TrainingDiverged``), or say what was done.

    Args:
        run: the RUN_DIR.
        training: the model, optimizer and counters.
        callback: the run callback.
        config: the run configuration.
        restored_step: the step the run started from.
        step: the step the last ``fit`` reached.
        seconds: wall time of fitting.
        budget: the ``--max-time`` budget, or None.
        chief: whether this process writes RUN_DIR.
    """
    if budget is not None and chief and not callback.diverged and callback.last_good == f"ckpt-{step}":
        callback.write_state(step)  # the budget's final record: why it stopped, the time it took
    if callback.diverged:
        kept = (f"the last good checkpoint ({callback.last_good}) is kept; resume with a lower --learning-rate"
                if callback.last_good else "no checkpoint was written before it; start over (--overwrite) "
                                           "with a lower --learning-rate")
        raise TrainingDiverged(f"--run {run.path}: the loss became {callback.diverged} at step "
                               f"{callback.diverged_step}; training stopped and {kept}")
    done = training.step()
    trained = (done - restored_step) * config.train.batch_size * config.model.n_ctx
    return TrainResult(run.path, done, int(training.epoch.numpy()), callback.new_history, restored_step, seconds,
                       trained / seconds if seconds > 0 else 0.0, budget.record(done) if budget else None)


def _check_max_time(max_time: float | None, strategy: str) -> None:
    """Refuse a budget that is not positive, or one with a multi-worker strategy (each worker would plan
    its own schedule from its own clock)."""
    if max_time is None:
        return
    if not max_time > 0:
        raise OptionError(f"--max-time: must be more than zero, got {max_time} s")
    if strategy == "multi-worker" or (strategy == "auto" and os.environ.get("TF_CONFIG")):
        raise OptionError("--max-time: not available with a multi-worker strategy (each worker would plan its own "
                          "schedule); set the length with --epochs and --steps-per-epoch")


def _has_lr_plan(directory: Path) -> bool:
    """Whether the newest checkpoint in ``directory`` holds a decay plan (a ``--max-time`` run wrote it)."""
    import tensorflow as tf

    files = _checkpoint_files(directory)
    latest = tf.train.latest_checkpoint(str(directory)) or (files[-1] if files else None)
    try:
        return latest is not None and tf.train.load_checkpoint(latest).has_tensor(PLAN_KEY)
    except Exception:  # a damaged checkpoint: _restore reports it
        return False


def _restore_plan(plan, path: str) -> None:
    """Load the decay plan saved in checkpoint ``path``; without one (the run trained without --max-time so
    far) ``plan`` keeps the fixed schedule ``(0, warmup, total)``, which is where that run's decay stands."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(path)
    if reader.has_tensor(PLAN_KEY):
        plan.assign(reader.get_tensor(PLAN_KEY))


def _checkpoint_files(directory: Path) -> list[str]:
    """Checkpoint prefixes (``…/ckpt-N``) found on disk in a RUN_DIR's ``checkpoints/``, oldest first."""
    run = RunDir(directory.parent)
    return [str(run.checkpoint_prefix(step)) for step in run.checkpoint_steps()]


def _restore(ckpt, paths, directory, optimizer, echo, partial: bool = False) -> tuple[int, str]:
    """Restore the newest checkpoint of ``paths`` (oldest first); return ``(step, path)``.

    A checkpoint that fails to restore is skipped (for an older one) only when its files are
    damaged. An intact one that does not fit this model (another version of the code, another
    shape or set of variables) stops the search: restoring an older one would lose its progress,
    and the next saves would delete it. ``partial``: the checkpoint may hold more than ``ckpt`` (the decay
    plan, restored on its own), which is not to be warned about.
    """
    damaged = []
    for path in reversed(paths):
        try:
            status = ckpt.restore(path)
            status.assert_existing_objects_matched()
            if partial:
                status.expect_partial()
            step = global_step(optimizer)
            expected = int(path.rsplit("-", 1)[-1])
            if step != expected:
                raise ValueError(f"optimizer step {step} != checkpoint number {expected}")
        except Exception as exc:  # a damaged file raises OpError, IndexError, ValueError, …
            name, reason = Path(path).name, _first_line(exc)
            problem = _checkpoint_damage(path)
            if problem is None:
                raise RunDirError(f"{directory}: {name} is intact but does not fit this model ({reason}); it was "
                                  "written by another version of poetry_gpt or TensorFlow, or for a model of another "
                                  "shape or set of variables: resume with the version and --config that wrote it, "
                                  "or train in another --run (this run's checkpoints are fine; keep them)") from None
            damaged.append(f"{name}: {problem}")
            continue
        if damaged:
            echo(f"Skipped unreadable checkpoint(s): {'; '.join(damaged)}")
        return step, path
    raise RunDirError(f"{directory}: no readable checkpoint, the files are damaged ({'; '.join(damaged)}); "
                      "put back checkpoints/ from a copy, or start over with --overwrite")


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters of it)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _checkpoint_damage(path: str) -> str | None:
    """Why a checkpoint's files are damaged (each tensor is read, so its checksum is checked), or
    None when they all read back intact."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(path)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except Exception as exc:  # OpError, IndexError, … for truncated or garbled files
        return _first_line(exc)
    return None


def _check_disk_space(path: Path, config: RunConfig) -> None:
    """Fail early when the RUN_DIR cannot be written or the disk cannot hold a few checkpoints."""
    import shutil as _sh

    probe = path / ".write-test"
    try:
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"--run {path}: cannot write there ({exc.strerror}); choose a writable folder") from None
    m = config.model
    params = 12 * m.n_layer * m.n_embd ** 2 + 10000 * m.n_embd
    need = params * 4 * 3 * (config.train.keep_checkpoints + 2)  # weights + 2 Adam moments per checkpoint/export
    free = _sh.disk_usage(path).free
    if free < need:
        raise RunDirError(f"--run {path}: only {free / 1e6:.0f} MB free, checkpoints need about {need / 1e6:.0f} MB; "
                          "free some space or choose another disk")
