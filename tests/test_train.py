"""Training: loss, exact resume, refusals, export, run-dir contents, NaN guard, corrupt checkpoints, CLI, Ctrl-C.

Everything runs the ``tiny`` preset (2 layers, width 64, context 64) on generated corpora of regular
五绝 poems over an 18-character set, written in ``tmp_path``; runs are 10–20 steps of 8×64 tokens.
Training tests use ``precision="fp32"`` so that two runs of the same steps give the same weights.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import write_raw

import poetry_gpt.train.callbacks as callbacks_mod
import poetry_gpt.train.loop as train_mod
import poetry_gpt.train.trainer as trainer_mod
from poetry_gpt.config import DataConfig, config_from_preset
from poetry_gpt.errors import DataDirError, RunDirError
from poetry_gpt.data.prepare import prepare
from poetry_gpt.data.datasets import IGNORE_INDEX, read_poem_ids, train_dataset
from poetry_gpt.data.manifest import load_manifest
from poetry_gpt.run_dir import RunDir
from poetry_gpt.train.loop import train
from poetry_gpt.train.trainer import TrainingDiverged, build_lm_trainer, set_precision
from poetry_gpt.data.vocab import CharVocab
from poetry_gpt.generate.epoch import sample_poems

CHARS = "春花秋月山水风云天地人心江河日夜雪雨"  # corpus A
OTHER_CHARS = "东西南北金木火土竹松梅兰草石"  # corpus B: another vocabulary
N_CTX = 64
STEPS = 10  # steps per epoch in most tests


# --- corpora and configs ------------------------------------------------------------------------



def make_data(folder: Path, n: int = 120, seed: int = 0, chars: str = CHARS, vocab_dir=None) -> Path:
    """raw.txt + ``prepare`` into ``folder/data``."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = write_raw(folder / "raw.txt", n, seed, chars)
    prepare([raw], folder / "data", DataConfig(valid_fraction=0.05), vocab_dir=vocab_dir, n_ctx=N_CTX)
    return folder / "data"


def tiny(**train_overrides):
    """The tiny preset in fp32, 1 epoch × STEPS steps, no samples (unless overridden)."""
    values = dict(precision="fp32", steps_per_epoch=STEPS, epochs=1, samples_per_epoch=0, checkpoint_every=0)
    values.update(train_overrides)
    return config_from_preset("tiny").replace(train=values)


def quiet_train(data_dir, run_dir, config, **kwargs):
    """``train`` with its progress lines collected; returns ``(result, lines)``."""
    lines: list[str] = []
    kwargs.setdefault("sample_poems", sample_poems)  # as the CLI: poems after each epoch
    result = train(data_dir, run_dir, config, echo=lines.append, verbose=0, **kwargs)
    return result, lines


def ln_vocab(data_dir) -> float:
    return math.log(CharVocab.load(data_dir).size)


def checkpoint_tensors(run_dir) -> dict[str, np.ndarray]:
    """Every saved value of the run's latest checkpoint (weights, Adam moments, step, epoch, best val loss)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(Path(run_dir) / "checkpoints"))
    keys = [k for k in reader.get_variable_to_shape_map()
            if k != "_CHECKPOINTABLE_OBJECT_GRAPH" and not k.startswith("save_counter")]
    return {k: reader.get_tensor(k) for k in keys}


def assert_same_checkpoint(run_a, run_b):
    a, b = checkpoint_tensors(run_a), checkpoint_tensors(run_b)
    assert sorted(a) == sorted(b)
    assert any(k.startswith("optimizer/") for k in a) and any(k.startswith("epoch/") for k in a)
    # fp32 on CPU gave bit-identical weights here; the tolerance only allows for thread-order float
    # reductions on other machines. A resume bug (lost Adam moments, restarted warm-up, a replayed or
    # skipped batch) moves weights by about one learning rate per step (≥ 3e-4), 30× above atol.
    for key in a:
        assert np.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key


def one_line(exc) -> str:
    text = str(exc.value if hasattr(exc, "value") else exc)
    assert "\n" not in text
    return text


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory) -> Path:
    """120 poems over CHARS, prepared (vocabulary of 29 tokens)."""
    return make_data(tmp_path_factory.mktemp("corpus-a"))


@pytest.fixture(scope="module")
def other_vocab_data(tmp_path_factory) -> Path:
    """A DATA_DIR with another vocabulary."""
    return make_data(tmp_path_factory.mktemp("corpus-b"), chars=OTHER_CHARS)


@pytest.fixture(scope="module")
def other_poems_data(tmp_path_factory, tiny_data_dir) -> Path:
    """Other poems with the same vocabulary as tiny_data_dir (prepare --vocab)."""
    return make_data(tmp_path_factory.mktemp("corpus-a2"), seed=7, vocab_dir=tiny_data_dir)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_data_dir) -> Path:
    """A finished run: 1 epoch × 20 steps, one sample poem. Tests that change it work on a copy."""
    run = tmp_path_factory.mktemp("trained") / "run"
    result, _ = quiet_train(tiny_data_dir, run, tiny(steps_per_epoch=20, samples_per_epoch=1))
    assert result.global_step == 20
    return run


# --- 1. the loss ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fresh_trainer(tiny_data_dir):
    from poetry_gpt.model.gpt2 import build_model

    set_precision("fp32")
    vocab = CharVocab.load(tiny_data_dir)
    lm = build_model(tiny().model, vocab, seed=1234)
    return lm, build_lm_trainer(lm), vocab


def test_first_loss_is_ln_vocab_and_shifted_once(tiny_data_dir, fresh_trainer):
    lm, trainer, vocab = fresh_trainer
    manifest = load_manifest(tiny_data_dir)
    batch = next(iter(train_dataset(manifest, 8, N_CTX, seed=1)))
    loss_sum, count = trainer._loss_terms(batch, training=False)
    loss = float(loss_sum / count)
    assert int(count) == 8 * (N_CTX - 1)  # packed rows: every position but the last has a target
    assert abs(loss - math.log(vocab.size)) < 0.3, (loss, math.log(vocab.size))

    # the same number by hand: position t predicts token t+1 (one shift, not zero, not two)
    ids = batch["input_ids"].numpy()
    logits = lm(input_ids=batch["input_ids"], training=False).logits.numpy().astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    rows, cols = np.meshgrid(np.arange(ids.shape[0]), np.arange(N_CTX - 1), indexing="ij")
    by_hand = -logp[rows, cols, ids[:, 1:]].mean()
    assert loss == pytest.approx(by_hand, rel=1e-5)
    same_token = -logp[rows, cols, ids[:, :-1]].mean()  # what a missing shift would compute
    assert abs(same_token - by_hand) > 1e-3

    # test_step reports the same token mean
    trainer.loss_tracker.reset_state()
    assert float(trainer.test_step(batch)["loss"]) == pytest.approx(loss, rel=1e-6)


def _padded_batch(poems: list[list[int]], width: int, extra_rows: int, sep_id: int, pad_id: int):
    import tensorflow as tf

    rows = [[sep_id] + p for p in poems] + [[] for _ in range(extra_rows)]
    ids = np.full((len(rows), width), pad_id, dtype=np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    labels = np.where(ids == pad_id, IGNORE_INDEX, ids).astype(np.int32)
    return {"input_ids": tf.constant(ids), "labels": tf.constant(labels)}


def test_padding_does_not_change_the_loss(tiny_data_dir, fresh_trainer):
    _, trainer, vocab = fresh_trainer
    poems = [p[:n] for p, n in zip(read_poem_ids(load_manifest(tiny_data_dir), "train")[:3], (32, 20, 11))]
    tight = _padded_batch(poems, 33, 0, vocab.sep_id, vocab.pad_id)
    loose = _padded_batch(poems, N_CTX, 5, vocab.sep_id, vocab.pad_id)  # 31 more pads per row + 5 all-pad rows
    s1, c1 = trainer._loss_terms(tight, training=False)
    s2, c2 = trainer._loss_terms(loose, training=False)
    assert int(c1) == int(c2) == 32 + 20 + 11
    assert float(s1 / c1) == pytest.approx(float(s2 / c2), rel=1e-5)
    trainer.loss_tracker.reset_state()
    a = float(trainer.test_step(tight)["loss"])
    trainer.loss_tracker.reset_state()
    b = float(trainer.test_step(loose)["loss"])
    assert a == pytest.approx(b, rel=1e-5)


@pytest.mark.parametrize("attention", ["poem", "row"])
def test_the_attention_setting_decides_what_a_training_row_attends_to(tiny_data_dir, attention):
    """``train.attention`` reaches the training step: ``poem`` gives every poem of a packed row the loss it has
    alone (``helpers.loss_poem_by_poem``); ``row`` the loss of the row as one sequence."""
    from helpers import loss_poem_by_poem

    from poetry_gpt.train.distribute import make_strategy
    from poetry_gpt.train.trainer import build_training

    set_precision("fp32")
    vocab = CharVocab.load(tiny_data_dir)
    training = build_training(tiny(attention=attention), vocab, make_strategy("default"), 10, "fp32")
    batch = next(iter(train_dataset(load_manifest(tiny_data_dir), 2, N_CTX, seed=1)))
    rows = batch["input_ids"].numpy().tolist()
    assert all(row.count(vocab.sep_id) >= 2 for row in rows)  # each row holds several poems
    loss_sum, _ = training.trainer._loss_terms(batch, training=False)
    by_poem = sum(float(loss_poem_by_poem(training.lm, row, vocab.sep_id)) for row in rows)
    logits = training.lm(input_ids=batch["input_ids"]).logits[:, :-1]
    whole_rows = float(tf_sum_cross_entropy(batch["input_ids"][:, 1:], logits))
    expected, other = (by_poem, whole_rows) if attention == "poem" else (whole_rows, by_poem)
    assert float(loss_sum) == pytest.approx(expected, rel=1e-5)
    assert abs(float(loss_sum) - other) > 1e-3 * other


def test_attention_is_an_option_of_a_new_run_and_a_resume_keeps_the_recorded_one(tmp_path, trained_run):
    from poetry_gpt.commands.train import _resolve

    assert _resolve(tmp_path / "new", "tiny", False, {"attention": "row"}).train.attention == "row"
    assert _resolve(tmp_path / "new", "tiny", False, {}).train.attention == "poem"
    run = copy_run(trained_run, tmp_path / "old")
    record = json.loads((run / "run.json").read_text())
    del record["config"]["train"]["attention"]  # as written before the setting existed
    (run / "run.json").write_text(json.dumps(record))
    assert _resolve(run, None, False, {}).train.attention == "row"
    assert _resolve(run, None, False, {"attention": "poem"}).train.attention == "poem"


def tf_sum_cross_entropy(labels, logits):
    """Summed sparse cross-entropy (TensorFlow's kernel)."""
    import tensorflow as tf

    return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def test_train_prints_nothing_by_default(tmp_path, tiny_data_dir, capfd):
    """The library never prints: without ``echo`` and ``verbose``, no progress line and no Keras bar on stdout
    (the CLI passes ``click.echo`` and its own verbosity)."""
    result = train(tiny_data_dir, tmp_path / "run", tiny(steps_per_epoch=2))
    assert result.global_step == 2 and result.history
    assert capfd.readouterr().out == ""


def test_train_puts_the_precision_policy_back(tmp_path, tiny_data_dir):
    """``train`` sets a process-wide Keras policy for its run; the caller's is back when it returns."""
    import tf_keras

    set_precision("fp32")
    result = train(tiny_data_dir, tmp_path / "run", tiny(steps_per_epoch=2, precision="bf16"))
    assert json.loads((tmp_path / "run" / "run.json").read_text())["precision"] == "bf16"
    assert result.global_step == 2 and tf_keras.mixed_precision.global_policy().name == "float32"


# --- 2. exact resume --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def straight_cosine(tmp_path_factory, tiny_data_dir) -> Path:
    """2 epochs × 10 steps in one go, warm-up 10 then cosine decay, a checkpoint every 3 steps."""
    run = tmp_path_factory.mktemp("straight") / "run"
    result, _ = quiet_train(tiny_data_dir, run, tiny(epochs=2, checkpoint_every=3))
    assert result.global_step == 20
    return run


def _stop_after(monkeypatch, step: int, exc: type[BaseException]):
    """Make the run callback raise ``exc`` once the optimizer has taken ``step`` steps."""
    real = callbacks_mod.RunCallback

    def patched(*args, **kwargs):
        cb = real(*args, **kwargs)
        hook = cb.on_train_batch_end

        def on_train_batch_end(batch, logs=None):
            hook(batch, logs)
            if cb._step() == step:
                raise exc("simulated stop")

        cb.on_train_batch_end = on_train_batch_end
        return cb

    monkeypatch.setattr(callbacks_mod, "RunCallback", patched)


@pytest.mark.parametrize("how, resumed_at", [(KeyboardInterrupt, 14), (RuntimeError, 12)],
                         ids=["ctrl-c-saves-step-14", "crash-keeps-interval-ckpt-12"])
def test_resume_mid_epoch_matches_one_go(tmp_path, monkeypatch, tiny_data_dir, straight_cosine, how, resumed_at):
    run = tmp_path / "run"
    config = tiny(epochs=2, checkpoint_every=3)
    _stop_after(monkeypatch, 14, how)
    with pytest.raises(how):
        quiet_train(tiny_data_dir, run, config)
    monkeypatch.undo()
    state = RunDir(run).read_state()
    assert state["global_step"] == resumed_at and state["latest_checkpoint"] == f"ckpt-{resumed_at}"

    result, lines = quiet_train(tiny_data_dir, run, config)
    assert result.restored_step == resumed_at
    assert any(re.match(rf"Resumed .* from ckpt-{resumed_at}: step {resumed_at}, epoch 1,", x) for x in lines), lines
    assert result.global_step == 20 and result.epoch == 2

    one_go, resumed = RunDir(straight_cosine).read_state(), RunDir(run).read_state()
    assert resumed["global_step"] == one_go["global_step"] == 20
    assert resumed["epoch"] == one_go["epoch"] == 2
    assert resumed["learning_rate"] == one_go["learning_rate"]
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    for key in ("loss", "val_loss", "learning_rate", "global_step"):
        assert resumed["history"][0][key] == pytest.approx(one_go["history"][0][key], rel=1e-6), key
    assert resumed["history"][1]["val_loss"] == pytest.approx(one_go["history"][1]["val_loss"], rel=1e-4)
    # the resumed part's loss continues from where training was, not from the untrained level
    assert resumed["history"][1]["loss"] < ln_vocab(tiny_data_dir) - 0.3
    assert_same_checkpoint(straight_cosine, run)


def test_extend_epochs_matches_one_go_and_resumes_without_data(tmp_path, tiny_data_dir):
    # a constant schedule (after warm-up): with cosine the decay's end moves when --epochs grows, so a
    # run extended from 1 to 2 epochs follows another schedule than one planned for 2 epochs from the start
    one_go, _ = quiet_train(tiny_data_dir, tmp_path / "one-go", tiny(epochs=2, schedule="constant"))
    first, _ = quiet_train(tiny_data_dir, tmp_path / "split", tiny(epochs=1, schedule="constant"))
    assert first.global_step == 10
    second, lines = quiet_train(None, tmp_path / "split", tiny(epochs=2, schedule="constant"))  # DATA_DIR from run.json
    assert second.restored_step == 10 and second.global_step == one_go.global_step == 20
    assert any(x.startswith("Resumed ") and "step 10, epoch 1" in x for x in lines), lines
    assert any("epochs 1 → 2" in x for x in lines if x.startswith("Changed on resume")), lines
    a, b = RunDir(tmp_path / "one-go").read_state(), RunDir(tmp_path / "split").read_state()
    assert a["global_step"] == b["global_step"] and a["learning_rate"] == b["learning_rate"]
    assert [h["loss"] for h in b["history"]] == pytest.approx([h["loss"] for h in a["history"]], rel=1e-5)
    assert b["history"][1]["loss"] < ln_vocab(tiny_data_dir) - 0.3
    assert_same_checkpoint(tmp_path / "one-go", tmp_path / "split")


def _record_step_losses(monkeypatch) -> dict[int, float]:
    """Collect each training step's own loss by global step (Keras logs the epoch's running mean)."""
    real = callbacks_mod.RunCallback
    losses: dict[int, float] = {}

    def patched(*args, **kwargs):
        cb = real(*args, **kwargs)
        hook = cb.on_train_batch_end

        def on_train_batch_end(batch, logs=None):
            mean = float(logs["loss"])  # mean over this fit call's epoch so far; every step has as many targets
            cb._sums = (cb._sums if batch else []) + [mean * (batch + 1)]
            losses[cb._step()] = cb._sums[-1] - (cb._sums[-2] if batch else 0.0)
            hook(batch, logs)

        cb.on_train_batch_end = on_train_batch_end
        return cb

    monkeypatch.setattr(callbacks_mod, "RunCallback", patched)
    return losses


def test_resume_with_dropout_matches_one_go_step_by_step(tmp_path, monkeypatch, tiny_data_dir):
    # dropout masks are drawn from (run seed, global step, layer), not from a random state that a
    # checkpoint does not hold: the resumed steps see the masks the uninterrupted run saw
    config = tiny(epochs=2, checkpoint_every=3).replace(model={"dropout": 0.2})
    one_go = _record_step_losses(monkeypatch)
    quiet_train(tiny_data_dir, tmp_path / "one-go", config)
    monkeypatch.undo()
    assert sorted(one_go) == list(range(1, 21))

    _stop_after(monkeypatch, 14, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        quiet_train(tiny_data_dir, tmp_path / "split", config)
    monkeypatch.undo()
    resumed = _record_step_losses(monkeypatch)
    result, _ = quiet_train(tiny_data_dir, tmp_path / "split", config)
    assert result.restored_step == 14 and sorted(resumed) == list(range(15, 21))
    for step in resumed:
        # fp32 on CPU: identical up to float summation order; another mask moves a step's loss by ~1e-2
        assert resumed[step] == pytest.approx(one_go[step], rel=1e-5, abs=1e-5), step
    assert_same_checkpoint(tmp_path / "one-go", tmp_path / "split")


def test_dropout_is_applied_in_training_only(tiny_data_dir):
    """Dropout changes training losses (so the test above is not trivially passed with dropout off)."""
    from poetry_gpt.model.gpt2 import build_model

    vocab = CharVocab.load(tiny_data_dir)
    batch = next(iter(train_dataset(load_manifest(tiny_data_dir), 8, N_CTX, seed=0, pad_id=vocab.pad_id,
                                    sep_id=vocab.sep_id)))
    set_precision("fp32")
    lm = build_model(tiny().replace(model={"dropout": 0.2}).model, vocab, seed=1)
    trainer = build_lm_trainer(lm, seed=5)
    trainer.compile(optimizer=trainer_mod.make_optimizer(tiny(), 10, "fp32"))
    loss = {training: float(trainer._loss_terms(batch, training)[0]) for training in (False, True)}
    assert loss[True] != loss[False]
    assert float(trainer._loss_terms(batch, True)[0]) == loss[True]  # same step, same masks
    trainer.optimizer.iterations.assign_add(1)
    assert float(trainer._loss_terms(batch, True)[0]) != loss[True]  # next step, new masks


# --- 3. resume refusals and run-dir rules ------------------------------------------------------

def test_resume_refuses_other_model_shape(trained_run, tiny_data_dir):
    config = config_from_preset("tiny").replace(model={"n_layer": 3}, train={"precision": "fp32"})
    with pytest.raises(RunDirError) as exc:
        quiet_train(tiny_data_dir, trained_run, config)
    assert "model shape differs (n_layer 2 → 3)" in one_line(exc)


def test_resume_refuses_other_vocabulary(trained_run, other_vocab_data):
    with pytest.raises(RunDirError) as exc:
        quiet_train(other_vocab_data, trained_run, tiny(steps_per_epoch=20))
    assert "vocabulary differs" in one_line(exc)


def test_resume_refuses_other_data_same_vocabulary(trained_run, other_poems_data):
    with pytest.raises(RunDirError) as exc:
        quiet_train(other_poems_data, trained_run, tiny(steps_per_epoch=20))
    text = one_line(exc)
    assert "data differs" in text and "vocabulary" not in text and "model shape" not in text


def test_new_run_needs_data(tmp_path):
    with pytest.raises(RunDirError, match="--data: needed for a new run"):
        quiet_train(None, tmp_path / "run", tiny())


def test_resume_with_moved_data_dir_says_to_pass_data(tmp_path, trained_run):
    import json

    run = copy_run(trained_run, tmp_path / "run")
    run_json = json.loads((run / "run.json").read_text(encoding="utf-8"))
    run_json["data"]["path"] = str(tmp_path / "gone")
    (run / "run.json").write_text(json.dumps(run_json), encoding="utf-8")
    with pytest.raises(DataDirError) as exc:
        quiet_train(None, run, tiny(steps_per_epoch=20, epochs=2))
    assert "recorded in" in one_line(exc) and "--data" in one_line(exc)


def test_nothing_to_do_prints_and_returns(tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path / "run")
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    shutil.rmtree(run / "export")  # as if Ctrl-C hit while the last epoch's export was written
    result, lines = quiet_train(None, run, tiny(steps_per_epoch=20))
    assert result.global_step == 20 and result.history == []
    assert any(x.startswith("Nothing to do") and "--epochs" in x for x in lines), lines
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    assert (run / "export" / "tf_model.h5").is_file()  # the export is brought back up to the checkpoint


def test_non_empty_folder_without_run_json(tmp_path, tiny_data_dir):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError) as exc:
        quiet_train(tiny_data_dir, run, tiny(steps_per_epoch=2))
    assert "--overwrite" in one_line(exc) and "run.json" in one_line(exc) and "notes.txt" in one_line(exc)
    assert [p.name for p in run.iterdir()] == ["notes.txt"]
    # --overwrite replaces only a run: someone's folder is refused too (issue 12.1)
    with pytest.raises(RunDirError) as exc:
        quiet_train(tiny_data_dir, run, tiny(steps_per_epoch=2), overwrite=True)
    assert "--overwrite replaces only a run" in one_line(exc) and str(run) in one_line(exc)
    assert [p.name for p in run.iterdir()] == ["notes.txt"]


def test_folder_left_by_a_run_stopped_before_run_json_is_not_foreign(tmp_path):
    from poetry_gpt.run_dir import open_run

    run = tmp_path / "run"
    for sub in ("checkpoints", "logs", "samples"):
        (run / sub).mkdir(parents=True)
    _, resuming = open_run(run, "train", overwrite=False)
    assert resuming is False
    (run / "logs" / "x").write_text("?")
    with pytest.raises(RunDirError):
        open_run(run, "train", overwrite=False)


def test_overwrite_starts_fresh(tmp_path, trained_run, tiny_data_dir):
    run = copy_run(trained_run, tmp_path / "run")
    result, lines = quiet_train(tiny_data_dir, run, tiny(steps_per_epoch=3), overwrite=True)
    assert result.restored_step == 0 and result.global_step == 3
    assert not any(x.startswith("Resumed") for x in lines)
    assert sorted(p.name for p in (run / "checkpoints").glob("*.index")) == ["ckpt-3.index"]
    assert [h["global_step"] for h in RunDir(run).read_state()["history"]] == [3]


def test_overwrite_reads_first_and_keeps_the_data_inside_the_run(tmp_path, trained_run, tiny_data_dir):
    """Issue 12.2: `train --run R --overwrite --data R/data` emptied R, then found no data."""
    run = copy_run(trained_run, tmp_path / "run")
    shutil.copytree(tiny_data_dir, run / "data")
    result, lines = quiet_train(run / "data", run, tiny(steps_per_epoch=2), overwrite=True)
    assert result.restored_step == 0 and result.global_step == 2
    assert load_manifest(run / "data").poems("train") == load_manifest(tiny_data_dir).poems("train")
    assert sorted(p.name for p in (run / "checkpoints").glob("*.index")) == ["ckpt-2.index"]
    assert RunDir(run).read_run()["data"]["path"] == str((run / "data").resolve())


def test_overwrite_refuses_before_deleting_anything(tmp_path, trained_run, tiny_data_dir):
    run = copy_run(trained_run, tmp_path / "run")
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    # --init-from the run's own export/: the new run would replace it, so it is refused
    with pytest.raises(RunDirError) as exc:
        quiet_train(tiny_data_dir, run, tiny(steps_per_epoch=2), overwrite=True, init_from=run / "export")
    assert f"--init-from {run / 'export'}: it is inside --run {run}, whose export --overwrite replaces" in one_line(exc)
    # a new run without --data, or with a DATA_DIR that is missing, is refused before R is emptied
    with pytest.raises(RunDirError, match="--data: needed for a new run"):
        quiet_train(None, run, tiny(steps_per_epoch=2), overwrite=True)
    with pytest.raises(DataDirError):
        quiet_train(tmp_path / "missing", run, tiny(steps_per_epoch=2), overwrite=True)
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before


# --- 4. export ----------------------------------------------------------------------------------

def test_export_loads_with_plain_transformers(trained_run, tiny_data_dir):
    import json

    import tensorflow as tf
    from transformers import PreTrainedTokenizerFast, TFGPT2LMHeadModel

    export = trained_run / "export"
    model = TFGPT2LMHeadModel.from_pretrained(str(export))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(export))
    prompt = "春月 唐诗：【"
    ids = tokenizer(prompt, return_tensors="tf")["input_ids"]
    assert tokenizer.decode(ids[0]) == prompt  # one id per character, no spaces
    out = model.generate(ids, attention_mask=tf.ones_like(ids), max_new_tokens=6, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    assert out.shape == (1, ids.shape[1] + 6)
    meta = json.loads((export / "poetry_gpt.json").read_text(encoding="utf-8"))
    assert meta["genre"] == "唐诗" and meta["n_ctx"] == N_CTX
    assert meta["vocab_hash"] == CharVocab.load(tiny_data_dir).hash
    assert meta["global_step"] == 20


# --- 5. what a run dir holds -----------------------------------------------------------------------

def test_run_dir_state_samples_and_tensorboard(trained_run, tiny_data_dir):
    state = RunDir(trained_run).read_state()
    for key in ("global_step", "epoch", "best_val_loss", "learning_rate", "history"):
        assert key in state
    assert state["global_step"] == 20 and state["epoch"] == 1
    (record,) = state["history"]
    assert record["epoch"] == 1 and record["loss"] < ln_vocab(tiny_data_dir)
    assert math.isfinite(record["val_loss"]) and state["best_val_loss"] == pytest.approx(record["val_loss"])
    assert record["val_perplexity"] == pytest.approx(math.exp(record["val_loss"]), rel=1e-6)
    samples = (trained_run / "samples" / "epoch-001.txt").read_text(encoding="utf-8").splitlines()
    assert len(samples) == 1 and "唐诗：【" in samples[0]
    events = list((trained_run / "logs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file under logs/"
    import tensorflow as tf

    logged = {}
    for event in tf.compat.v1.train.summary_iterator(str(events[0])):
        for value in event.summary.value:
            assert value.metadata.plugin_data.plugin_name == "scalars"
            logged[value.tag] = (event.step, float(tf.make_ndarray(value.tensor)))
    assert logged["loss"] == (20, pytest.approx(record["loss"]))
    assert logged["val_loss"] == (20, pytest.approx(record["val_loss"]))
    assert "learning_rate" in logged
    run_json = RunDir(trained_run).read_run()
    assert run_json["config"]["preset"] == "tiny" and run_json["vocab"]["hash"] == CharVocab.load(tiny_data_dir).hash
    assert Path(run_json["data"]["path"]) == tiny_data_dir.resolve()


# --- 6. NaN guard -----------------------------------------------------------------------------------

def _nan_from_step(monkeypatch, step: int):
    """The trainer's loss (and so its gradients) becomes NaN from the ``step``-th step on."""
    import tensorflow as tf

    real = trainer_mod.build_lm_trainer

    def patched(lm, **kwargs):
        trainer = real(lm, **kwargs)
        terms = trainer._loss_terms

        def nan_terms(batch, training):
            loss_sum, count = terms(batch, training)
            if training:
                bad = trainer.optimizer.iterations >= step - 1
                loss_sum = loss_sum * tf.where(bad, tf.constant(float("nan")), tf.constant(1.0))
            return loss_sum, count

        trainer._loss_terms = nan_terms
        return trainer

    monkeypatch.setattr(trainer_mod, "build_lm_trainer", patched)


def _nan_weights_at_step(monkeypatch, step: int):
    """The weights turn NaN right before the checkpoint of ``step`` (the loss stays finite)."""
    real = callbacks_mod.RunCallback

    def patched(*args, **kwargs):
        cb = real(*args, **kwargs)
        hook = cb.on_train_batch_end

        def on_train_batch_end(batch, logs=None):
            if cb._step() == step:
                v = cb.lm.trainable_variables[0]
                v.assign(v * float("nan"))
            hook(batch, logs)

        cb.on_train_batch_end = on_train_batch_end
        return cb

    monkeypatch.setattr(callbacks_mod, "RunCallback", patched)


@pytest.mark.parametrize("fault", ["nan-loss", "nan-weights"])
def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, trained_run, fault):
    run = copy_run(trained_run, tmp_path / "run")  # ckpt-20 after epoch 1
    config = tiny(steps_per_epoch=20, epochs=2, checkpoint_every=5)
    if fault == "nan-loss":
        _nan_from_step(monkeypatch, 24)
        bad_step = 24
    else:
        _nan_weights_at_step(monkeypatch, 30)  # would be saved as the interval checkpoint ckpt-30
        bad_step = 30
    with pytest.raises(TrainingDiverged) as exc:
        quiet_train(None, run, config)
    text = one_line(exc)
    assert f"became NaN at step {bad_step}" in text
    last_good = "ckpt-20" if fault == "nan-loss" else "ckpt-25"
    assert f"last good checkpoint ({last_good}) is kept" in text
    monkeypatch.undo()

    state = RunDir(run).read_state()
    assert state["latest_checkpoint"] == last_good and state["global_step"] == int(last_good[5:])
    assert all(np.isfinite(v).all() for v in checkpoint_tensors(run).values())
    if fault == "nan-weights":
        return
    result, lines = quiet_train(None, run, tiny(steps_per_epoch=20, epochs=2, learning_rate=1e-3))
    assert result.restored_step == 20 and result.global_step == 40
    assert any("learning_rate 0.003 → 0.001" in x for x in lines), lines
    assert math.isfinite(result.history[-1]["loss"])


# --- 7. corrupt checkpoints, --init-from ------------------------------------------------------------

def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        for i in range(len(data) // 4, len(data) * 3 // 4, 7):
            data[i] ^= 0x5A
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "garble"])
def test_corrupt_latest_checkpoint_falls_back(tmp_path, straight_cosine, tiny_data_dir, how):
    run = copy_run(straight_cosine, tmp_path / "run")  # keeps ckpt-15, ckpt-18, ckpt-20
    (data,) = (run / "checkpoints").glob("ckpt-20.data-*")
    _damage(data, how)
    result, lines = quiet_train(None, run, tiny(epochs=2, checkpoint_every=3))
    assert any(x.startswith("Skipped unreadable checkpoint(s): ckpt-20") for x in lines), lines
    assert result.restored_step == 18 and result.global_step == 20
    assert_same_checkpoint(straight_cosine, run)  # 18 + the same 2 steps again


def test_no_readable_checkpoint_is_an_error_not_a_restart(tmp_path, straight_cosine):
    run = copy_run(straight_cosine, tmp_path / "run")
    for data in (run / "checkpoints").glob("ckpt-*.data-*"):
        _damage(data, "truncate")
    with pytest.raises(RunDirError) as exc:
        quiet_train(None, run, tiny(epochs=3, checkpoint_every=3))
    text = one_line(exc)
    assert "no readable checkpoint" in text and "ckpt-20" in text and "--overwrite" in text
    # the real reason, told as damage (issue 12.5)
    assert "the files are damaged" in text and re.search(r"ckpt-20: \w+(Error|Exception): \S", text), text


def test_an_intact_checkpoint_of_another_shape_is_not_called_damaged(tmp_path, trained_run, tiny_data_dir):
    """Issue 12.5: a checkpoint written for another model (shape or variable set) is intact: the message gives
    the reason, does not advise deleting the run, and no older checkpoint is restored in its place."""
    import tensorflow as tf

    from poetry_gpt.model.gpt2 import build_model

    run = copy_run(trained_run, tmp_path / "run")  # holds ckpt-20
    other = build_model(config_from_preset("tiny").replace(model={"n_embd": 32}).model, CharVocab.load(tiny_data_dir))
    tf.train.CheckpointManager(tf.train.Checkpoint(model=other), str(run / "checkpoints"), max_to_keep=5).save(
        checkpoint_number=21)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError) as exc:
        quiet_train(None, run, tiny(epochs=2, steps_per_epoch=20))
    text = one_line(exc)
    assert "ckpt-21 is intact but does not fit this model (ValueError: " in text and "shape" in text, text
    assert "another version" in text and "--overwrite" not in text and "damaged" not in text, text
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_lost_checkpoint_state_file(tmp_path, straight_cosine):
    run = copy_run(straight_cosine, tmp_path / "run")
    (run / "checkpoints" / "checkpoint").unlink()  # the CheckpointManager's index of checkpoints
    result, lines = quiet_train(None, run, tiny(epochs=2, checkpoint_every=3))
    assert result.restored_step == 20 and any(x.startswith("Nothing to do") for x in lines)
    for f in (run / "checkpoints").iterdir():
        f.unlink()
    with pytest.raises(RunDirError) as exc:
        quiet_train(None, run, tiny(epochs=3, checkpoint_every=3))
    assert "records step 20" in one_line(exc) and "no checkpoint" in one_line(exc)


def test_init_from_refuses_a_folder_that_is_not_gpt2(tmp_path, tiny_data_dir):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "readme.txt").write_text("not a model")
    with pytest.raises(RunDirError) as exc:
        quiet_train(tiny_data_dir, tmp_path / "run1", tiny(), init_from=junk)
    assert one_line(exc).startswith(f"--init-from {junk}: not a GPT-2")
    (junk / "config.json").write_text('{"model_type": "bert", "vocab_size": 29}')
    with pytest.raises(RunDirError) as exc:
        quiet_train(tiny_data_dir, tmp_path / "run2", tiny(), init_from=junk)
    assert "'bert' model, not GPT-2" in one_line(exc)
    (junk / "config.json").write_text("{not json")
    with pytest.raises(RunDirError) as exc:
        quiet_train(tiny_data_dir, tmp_path / "run3", tiny(), init_from=junk)
    assert "--init-from" in one_line(exc)


def test_init_from_export_fine_tunes_and_refuses_other_vocabulary(tmp_path, trained_run, tiny_data_dir,
                                                                 other_vocab_data):
    with pytest.raises(RunDirError) as exc:
        quiet_train(other_vocab_data, tmp_path / "other", tiny(), init_from=trained_run / "export")
    assert "vocabulary differs" in one_line(exc) and "--vocab" in one_line(exc)

    trained_val = RunDir(trained_run).read_state()["history"][-1]["val_loss"]
    result, _ = quiet_train(tiny_data_dir, tmp_path / "ft", tiny(steps_per_epoch=2, learning_rate=1e-5,
                                                                 warmup_steps=0), init_from=trained_run / "export")
    ft_val = result.history[-1]["val_loss"]
    assert ft_val == pytest.approx(trained_val, abs=0.05)  # starts from the trained weights, not from scratch
    assert ft_val < ln_vocab(tiny_data_dir) - 0.3
    assert RunDir(tmp_path / "ft").read_run()["init_from"] == str(trained_run / "export")


def _gpt2_folder(folder: Path, vocab: CharVocab, **settings) -> Path:
    """A tiny GPT-2 of the tiny preset's shape written by save_pretrained (+ vocab.txt), with ``settings`` in its
    config; settings TensorFlow's GPT-2 cannot even build (an activation it lacks) are written into config.json."""
    import json

    import tensorflow as tf
    from transformers import GPT2Config, TFGPT2LMHeadModel

    m = tiny().model
    buildable = {k: v for k, v in settings.items() if k != "activation_function"}
    lm = TFGPT2LMHeadModel(GPT2Config(vocab_size=vocab.size, n_positions=m.n_ctx, n_embd=m.n_embd,
                                      n_layer=m.n_layer, n_head=m.n_head, resid_pdrop=0.3, **buildable))
    lm(tf.zeros([1, 2], tf.int32))
    lm.save_pretrained(str(folder))
    vocab.save(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **settings}))
    return folder


@pytest.mark.parametrize("settings, named", [
    ({"activation_function": "gelu_pytorch_tanh"}, "activation_function 'gelu_pytorch_tanh'"),
    ({"activation_function": "glu"}, "activation_function 'glu'"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx true"),
    ({"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn true"),
    ({"scale_attn_weights": False}, "scale_attn_weights false"),
    ({"add_cross_attention": True}, "add_cross_attention true"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings false"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_init_from_and_generation_refuse_a_gpt2_they_would_compute_otherwise(tmp_path, tiny_data_dir, settings,
                                                                            named):
    from poetry_gpt.model.export import load_export

    vocab = CharVocab.load(tiny_data_dir)
    folder = _gpt2_folder(tmp_path / "foreign", vocab, **settings)
    with pytest.raises(RunDirError) as exc:
        trainer_mod.load_init(folder, vocab, tiny())
    assert one_line(exc).startswith(f"--init-from {folder}: config.json sets {named}")
    with pytest.raises(RunDirError) as exc:  # the export loader of generate / eval
        load_export(folder)
    assert one_line(exc).startswith(f"{folder}: config.json sets {named}")


def test_init_from_accepts_other_activation_and_inner_width_and_uses_the_runs_dropout(tmp_path, tiny_data_dir):
    # the fast training path and the sampler compute relu and a 96-wide MLP as transformers does
    # (tests/test_fast_gpt2.py); the folder's dropout (0.3) gives way to the run's --dropout
    vocab = CharVocab.load(tiny_data_dir)
    folder = _gpt2_folder(tmp_path / "relu", vocab, activation_function="relu", n_inner=96)
    lm = trainer_mod.load_init(folder, vocab, tiny().replace(model={"dropout": 0.1}))
    assert lm.config.activation_function == "relu" and lm.transformer.h[0].mlp.c_fc.weight.shape == (64, 96)
    assert lm.config.resid_pdrop == lm.config.embd_pdrop == lm.config.attn_pdrop == 0.1


def _kernels(lm, layer_names):
    """The kernels of every block's layers named ``layer_names`` (e.g. ``attn.c_proj``), flattened into one array."""
    out = []
    for block in lm.transformer.h:
        for name in layer_names:
            part, layer = name.split(".")
            out.append(getattr(getattr(block, part), layer).weight.numpy().ravel())
    return np.concatenate(out)


def test_build_model_draws_the_weights_as_gpt2(tiny_data_dir):
    """A new model's kernels and embeddings come from a plain normal(0, 0.02), its attn.c_proj and mlp.c_proj
    kernels from normal(0, 0.02/sqrt(2·n_layer)) (transformers' PyTorch GPT-2 and nanoGPT; TF GPT-2 draws a
    truncated normal and does not scale); biases are zeros, layer norms ones and zeros; the draw follows the seed."""
    from poetry_gpt.config import ModelConfig
    from poetry_gpt.model.gpt2 import build_model

    vocab = CharVocab.load(tiny_data_dir)
    shape = ModelConfig(n_layer=4, n_embd=64, n_head=2, n_ctx=32)
    lm = build_model(shape, vocab, seed=3)
    projections = _kernels(lm, ["attn.c_proj", "mlp.c_proj"])  # 81,920 draws: std known to < 0.5%
    others = np.concatenate([_kernels(lm, ["attn.c_attn", "mlp.c_fc"]), lm.transformer.wte.embeddings.numpy().ravel(),
                             lm.transformer.wpe.embeddings.numpy().ravel()])
    assert others.std() == pytest.approx(0.02, rel=0.01) and abs(others.mean()) < 3e-4
    assert projections.std() == pytest.approx(0.02 / math.sqrt(2 * 4), rel=0.01)
    # a plain normal has 4.55% of its draws beyond 2 std; TF's truncated normal has none
    assert np.mean(np.abs(others) > 0.04) == pytest.approx(0.0455, abs=0.003)
    for block in lm.transformer.h:
        for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            assert not layer.bias.numpy().any()
        assert (block.ln_1.gamma.numpy() == 1).all() and not block.ln_1.beta.numpy().any()
    again, other = build_model(shape, vocab, seed=3), build_model(shape, vocab, seed=4)
    np.testing.assert_array_equal(_kernels(again, ["mlp.c_fc"]), _kernels(lm, ["mlp.c_fc"]))
    assert not np.allclose(_kernels(other, ["mlp.c_fc"]), _kernels(lm, ["mlp.c_fc"]))


def test_loaded_models_keep_their_weights_no_init_scaling(tmp_path, tiny_data_dir):
    """--init-from (from_pretrained) and a checkpoint restored over build_model give the saved weights unchanged."""
    import tensorflow as tf

    from poetry_gpt.model.gpt2 import build_model

    vocab = CharVocab.load(tiny_data_dir)
    folder = _gpt2_folder(tmp_path / "gpt2", vocab)  # TF GPT-2's own draws: projections like every kernel
    loaded = trainer_mod.load_init(folder, vocab, tiny())
    ratio = _kernels(loaded, ["attn.c_proj", "mlp.c_proj"]).std() / _kernels(loaded, ["attn.c_attn", "mlp.c_fc"]).std()
    assert ratio == pytest.approx(1.0, rel=0.03)  # scaled, it would be 1/sqrt(2·2) = 0.5
    again = trainer_mod.load_init(folder, vocab, tiny())
    for a, b in zip(loaded.weights, again.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # resume / generate --checkpoint: build_model, then every variable restored from the checkpoint
    source = build_model(tiny().model, vocab, seed=11)
    prefix = tf.train.Checkpoint(model=source).save(str(tmp_path / "ckpt" / "c"))
    restored = build_model(tiny().model, vocab, seed=12)
    tf.train.Checkpoint(model=restored).restore(prefix).assert_existing_objects_matched()
    for a, b in zip(source.weights, restored.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# --- 8. CLI -------------------------------------------------------------------------------------------

def _cli(args):
    from click.testing import CliRunner

    from poetry_gpt.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_unknown_preset_lists_the_presets(tmp_path, tiny_data_dir):
    result = _cli(["train", "--data", tiny_data_dir, "--run", tmp_path / "run", "--config", "huge"])
    assert result.exit_code != 0
    assert "unknown preset 'huge'" in result.output and "tiny, small, base, medium" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, value", [("--batch-size", "0"), ("--learning-rate", "-1"), ("--epochs", "0")])
def test_cli_invalid_values_name_the_option(tmp_path, tiny_data_dir, option, value):
    result = _cli(["train", "--data", tiny_data_dir, "--run", tmp_path / "run", "--config", "tiny", option, value])
    assert result.exit_code != 0
    (line,) = [x for x in result.output.splitlines() if x.startswith("Error")]
    assert option in line and value in line


def test_cli_resume_with_other_preset_is_refused(trained_run):
    result = _cli(["train", "--run", trained_run, "--config", "small"])
    assert result.exit_code == 1
    assert "--config small" in result.output and "'tiny'" in result.output


def test_cli_pipeline_prints_poems(tmp_path):
    (tmp_path / "run").mkdir()
    raw = write_raw(tmp_path / "run" / "raw.txt", 120)  # an input inside the RUN_DIR is not foreign, and stays
    result = _cli(["pipeline", raw, "--run", tmp_path / "run", "--config", "tiny", "--steps-per-epoch", "5",
                   "--samples", "2", "--quiet"])  # precision auto: bf16 on CPUs with AMX / AVX512-BF16
    assert result.exit_code == 0, result.output
    assert "Trained to step 5" in result.output
    poems = result.output.split("Poems:\n", 1)[1].splitlines()
    assert len(poems) == 2 and all(p.startswith("  ") and len(p.strip()) > 1 for p in poems)
    # 5 steps teach little: a poem either closes with 】 or is reported unclosed, never cut silently
    assert all(p.endswith("】") or p.strip().startswith("[unclosed]") for p in poems), poems
    assert (tmp_path / "run" / "data" / "manifest.json").is_file()
    assert (tmp_path / "run" / "export" / "tf_model.h5").is_file()
    assert raw.read_text(encoding="utf-8").count("\n") == 120


@pytest.mark.parametrize("overwrite", [False, True])
def test_cli_pipeline_never_replaces_a_data_folder_it_did_not_write(tmp_path, overwrite):
    """Issue 12.1: `pipeline proj/data/raw.txt --run proj` replaced proj/data, raw.txt and all."""
    data = tmp_path / "proj" / "data"
    data.mkdir(parents=True)
    raw = write_raw(data / "raw.txt", 120)
    (data / "notes.txt").write_text("mine")
    other = write_raw(tmp_path / "other.txt", 120)
    before = {p: p.read_bytes() for p in data.iterdir()}
    for given in (raw, other):
        result = _cli(["pipeline", given, "--run", tmp_path / "proj", "--config", "tiny", "--steps-per-epoch", "2",
                       *(["--overwrite"] if overwrite else [])])
        assert result.exit_code == 1 and str(tmp_path / "proj") in result.output and "data" in result.output, result.output
        assert "--out" not in result.output, result.output  # pipeline has no --out: name what the user typed
        assert {p: p.read_bytes() for p in data.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "proj").iterdir()) == ["data"]


def test_cli_pipeline_refuses_a_foreign_folder_before_preparing(tmp_path):
    raw = write_raw(tmp_path / "raw.txt", 120)
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    result = _cli(["pipeline", raw, "--run", run, "--config", "tiny"])
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert [p.name for p in run.iterdir()] == ["notes.txt"]


# --- 9. Ctrl-C for real ----------------------------------------------------------------------------------

def _poetry_gpt(*args, **popen):
    exe = Path(sys.executable).with_name("poetry-gpt")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "poetry_gpt.cli"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # a child started with SIGINT ignored (a test run launched as a background job of a shell without job
    # control inherits that) never gets Python's KeyboardInterrupt: give it the default disposition
    restore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    return subprocess.Popen(cmd + [str(a) for a in args], env=env, text=True, preexec_fn=restore_sigint, **popen)


@pytest.mark.slow
def test_ctrl_c_saves_and_train_again_continues(tmp_path, tiny_data_dir):
    run = tmp_path / "run"
    args = ["train", "--data", tiny_data_dir, "--run", run, "--config", "tiny", "--steps-per-epoch", "150",
            "--checkpoint-every", "5", "--samples-per-epoch", "0", "--precision", "fp32", "--quiet"]
    out, err = tmp_path / "out1.txt", tmp_path / "err1.txt"
    with open(out, "w") as o, open(err, "w") as e:
        proc = _poetry_gpt(*args, stdout=o, stderr=e)
        deadline = time.monotonic() + 180
        while not list((run / "checkpoints").glob("ckpt-*.index")):
            assert proc.poll() is None, f"train ended early:\n{out.read_text()}\n{err.read_text()}"
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    stderr = err.read_text()
    assert rc == 130, (rc, stderr)
    assert stderr.strip().splitlines()[-1] == "Interrupted." and "Traceback" not in stderr
    stopped_at = RunDir(run).read_state()["global_step"]
    assert 5 <= stopped_at < 150
    assert RunDir(run).export_step() == stopped_at  # export/ refreshed too, not left at an older step

    proc = _poetry_gpt("train", "--run", run, "--quiet", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    m = re.search(r"^Resumed .* step (\d+),", stdout, re.M)
    assert m and int(m.group(1)) == stopped_at > 0, stdout
    assert "Trained to step 150 (epoch 1)" in stdout
