"""``kill -9`` of ``poetry-gpt train`` at many moments, repeated on one RUN_DIR (issue 7).

One RUN_DIR is trained by a series of ``train`` processes (``tiny`` preset, 10 steps an epoch,
``--checkpoint-every 3``), each killed with SIGKILL at a chosen moment:

* at a random moment of start-up or of training,
* while TensorFlow writes a checkpoint (as soon as ``checkpoints/ckpt-N_temp`` appears),
* while ``export/`` is being rebuilt (``export.tmp/`` appears) or just before it is swapped in
  (``export.tmp/poetry_gpt.json``, the export's last file, exists),
* and once more, at random, while TensorFlow's ``checkpoint`` file, ``trainer_state.json`` or a
  sample file is written, or while another checkpoint is written.

After every kill: run.json and trainer_state.json parse; the export loads whenever one had been
completed before; the next ``train`` resumes from the latest checkpoint the ``checkpoint`` state
file lists (never from scratch when one existed) and loses at most one checkpoint interval
(3 steps) of the step that was being saved. A last ``train`` finishes the run cleanly, and
leaves no half-written temporaries behind.

Set ``KILL_SEED`` to replay a failing order of random delays.
"""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cli, prepared_data, write_raw

CHARS = "春花秋月山水风云天地人心江河日夜雪雨"
STEPS = 10  # steps per epoch: an export every ~half second of training
EVERY = 3  # --checkpoint-every
START_TIMEOUT = 90  # seconds a process may take to reach its kill moment
FINAL_TIMEOUT = 120






def latest_checkpoint(run: Path) -> int | None:
    """The step of the latest checkpoint TensorFlow's ``checkpoint`` state file lists."""
    try:
        text = (run / "checkpoints" / "checkpoint").read_text()
    except OSError:
        return None
    m = re.search(r'^model_checkpoint_path: "(?:.*/)?ckpt-(\d+)"', text, re.M)
    return int(m.group(1)) if m else None


# --- kill moments: each returns a description once the moment has come, else None ------------------

def _listing(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def writing_checkpoint(run: Path, state: dict):
    for name in _listing(run / "checkpoints"):
        m = re.fullmatch(r"ckpt-(\d+)_temp", name)
        if m and int(m.group(1)) > (state["start_latest"] or 0):
            state["saving_step"] = int(m.group(1))
            return f"while writing checkpoint {name}"
    return None


def writing_checkpoint_state(run: Path, state: dict):
    if any(n.startswith("checkpoint.tmp") for n in _listing(run / "checkpoints")):
        return "while writing checkpoints/checkpoint"
    return None


def writing_export(run: Path, state: dict):
    if (run / "export.tmp").is_dir() and _trained(run, state):
        state["export_step"] = _export_tmp_step(run)
        return "while writing export.tmp/"
    return None


def swapping_export(run: Path, state: dict):
    if (run / "export.tmp" / "poetry_gpt.json").is_file() and _trained(run, state):
        state["export_step"] = _export_tmp_step(run)
        return "with export.tmp/ complete, before the swap"
    return None


def writing_small_files(run: Path, state: dict):
    names = _listing(run) + _listing(run / "samples")
    if _trained(run, state) and any(n.endswith(".tmp") and not n.startswith("export") for n in names):
        return "while writing " + ", ".join(n for n in names if n.endswith(".tmp"))
    return None


def _trained(run: Path, state: dict) -> bool:
    """This process has written a checkpoint of its own (so it is past start-up)."""
    latest = latest_checkpoint(run)
    return latest is not None and latest != state["start_latest"]


def _export_tmp_step(run: Path) -> int | None:
    try:
        return json.loads((run / "export.tmp" / "poetry_gpt.json").read_text(encoding="utf-8"))["global_step"]
    except (OSError, ValueError, KeyError):
        return None


def after_delay(seconds: float, require_training: bool):
    def moment(run: Path, state: dict):
        if require_training and not _trained(run, state):
            return None
        state.setdefault("t0", time.monotonic())
        if time.monotonic() - state["t0"] >= seconds:
            return f"{seconds:.2f} s after {'its first checkpoint' if require_training else 'start'}"
        return None
    return moment


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepared_data(tmp_path_factory.mktemp("kill-data"), 200)


def start_train(data: Path, run: Path, log: Path, epochs: int) -> subprocess.Popen:
    args = ["train", "--data", str(data), "--run", str(run), "--config", "tiny", "--steps-per-epoch", str(STEPS),
            "--epochs", str(epochs), "--checkpoint-every", str(EVERY), "--samples-per-epoch", "1", "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    with open(log, "w") as out:
        return subprocess.Popen(cli() + args, stdout=out, stderr=subprocess.STDOUT, env=env)


def plain_load(export: Path) -> dict:
    """Load ``export`` with plain transformers (as the README shows); return its poetry_gpt.json."""
    from transformers import TFGPT2LMHeadModel

    lm = TFGPT2LMHeadModel.from_pretrained(str(export))
    assert lm.config.vocab_size > 0
    return json.loads((export / "poetry_gpt.json").read_text(encoding="utf-8"))


def check_run_dir(run: Path, export_completed: bool, context: str) -> None:
    """What must hold in RUN_DIR after any kill."""
    from poetry_gpt.model.export import load_export

    for name in ("run.json", "trainer_state.json"):
        if (run / name).exists():
            json.loads((run / name).read_text(encoding="utf-8"))  # raises if half-written
    if (run / "export").exists() or export_completed:
        plain_load(run / "export")  # what a user of plain transformers does, no poetry_gpt fallback
        lm, vocab, meta = load_export(run)
        assert lm.config.vocab_size == vocab.size, context
        latest = latest_checkpoint(run)
        assert latest is not None and meta["global_step"] <= latest, (meta, latest, context)


@pytest.mark.slow
def test_kill_9_at_many_moments_then_resume(data_dir, tmp_path):
    seed = int(os.environ.get("KILL_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    run = tmp_path / "run"
    moments = [
        ("startup", after_delay(rng.uniform(1.0, 6.0), require_training=False)),
        ("checkpoint", writing_checkpoint),
        ("export", writing_export),
        ("random", after_delay(rng.uniform(0.0, 1.5), require_training=True)),
        ("export-swap", swapping_export),
        rng.choice([("checkpoint-state", writing_checkpoint_state), ("small-files", writing_small_files),
                    ("checkpoint", writing_checkpoint)]),
    ]
    timings = []
    export_completed = False
    fired = []
    for i, (kind, moment) in enumerate(moments):
        start_latest = latest_checkpoint(run)
        state = {"start_latest": start_latest}
        log = tmp_path / f"train-{i}-{kind}.log"
        proc = start_train(data_dir, run, log, epochs=1000)
        started = time.monotonic()
        deadline = time.monotonic() + START_TIMEOUT
        why = None
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                why = moment(run, state)
                if why:
                    break
                time.sleep(0.0005)
        finally:
            proc.kill()
            proc.wait()
        timings.append(f"{kind} {time.monotonic() - started:.1f}s")
        out = log.read_text(errors="replace")
        context = f"KILL_SEED={seed}, kill {i} ({kind}) {why or 'at the time limit'}:\n{out[-3000:]}"
        assert proc.returncode == -9, f"train exited by itself ({proc.returncode}); {context}"
        if why:
            fired.append(kind)

        # the process resumed from the latest checkpoint the state file listed when it started
        resumed = re.search(r"Resumed .* from ckpt-(\d+): step (\d+)", out)
        if resumed:
            assert start_latest is not None and int(resumed.group(2)) == start_latest, context
        elif "Training " in out:
            assert start_latest is None, f"started from scratch although ckpt-{start_latest} existed; {context}"

        # what it left: readable files, a loadable export, a checkpoint at most one interval behind
        export_completed = export_completed or "export/ updated" in out
        check_run_dir(run, export_completed, context)
        latest = latest_checkpoint(run)
        if state.get("saving_step") is not None:
            assert state["saving_step"] - (latest or 0) <= EVERY, (latest, state, context)
        if state.get("export_step") is not None:  # the epoch's checkpoint is written before its export
            assert latest is not None and latest >= state["export_step"], (latest, state, context)
        if start_latest is not None:
            assert latest is not None and latest >= start_latest, context

    print(f"KILL_SEED={seed}; kills: {', '.join(timings)}")
    for kind in ("checkpoint", "export", "export-swap"):
        assert kind in fired, f"KILL_SEED={seed}: never caught the moment {kind!r} (fired: {fired})"

    # a last, uninterrupted train finishes the current epoch (or one more) and leaves a clean RUN_DIR
    latest = latest_checkpoint(run)
    assert latest is not None, "no checkpoint after all those runs"
    epochs = latest // STEPS + 1
    log = tmp_path / "train-final.log"
    proc = start_train(data_dir, run, log, epochs=epochs)
    try:
        code = proc.wait(timeout=FINAL_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text(errors="replace")
    assert code == 0, out[-3000:]
    assert re.search(rf"Resumed .* from ckpt-{latest}: step {latest}\b", out), out[-3000:]
    assert f"Trained to step {epochs * STEPS} (epoch {epochs})" in out, out[-3000:]

    from poetry_gpt.model.export import load_export

    state = json.loads((run / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["global_step"] == epochs * STEPS and state["epoch"] == epochs
    steps = [h["global_step"] for h in state["history"]]
    assert steps == sorted(set(steps)) and steps[-1] == epochs * STEPS, steps
    _, _, meta = load_export(run)
    assert meta["global_step"] == epochs * STEPS
    leftovers = [p.name for p in [*run.iterdir(), *(run / "checkpoints").iterdir(), *(run / "samples").iterdir()]
                 if p.name.endswith((".tmp", "_temp", ".old")) or ".tmp" in p.name]
    assert not leftovers, leftovers


# --- the export swap, step by step (deterministic) ---------------------------------------------------

def _tiny_model_and_vocab(tmp_path):
    from poetry_gpt.config import DataConfig, config_from_preset
    from poetry_gpt.model.gpt2 import build_model
    from poetry_gpt.data.prepare import prepare
    from poetry_gpt.data.vocab import CharVocab

    data = tmp_path / "data"
    prepare([write_raw(tmp_path / "raw.txt", 40)], data, DataConfig(valid_fraction=0.1), n_ctx=64)
    vocab = CharVocab.load(data)
    return build_model(config_from_preset("tiny").model, vocab), vocab


def test_export_survives_a_kill_between_the_two_renames_and_the_next_export(tmp_path, monkeypatch):
    """Killed after ``export`` → ``export.old`` but before ``export.tmp`` → ``export``: the old export
    still loads, and the next ``save_export`` puts it back first, so even a failure while the new
    export is built (here: save_pretrained raising) leaves a loadable ``export/``."""
    import poetry_gpt.model.export as model_mod

    lm, vocab = _tiny_model_and_vocab(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    model_mod.save_export(lm, vocab, run / "export", {"global_step": 5})
    (run / "export").rename(run / "export.old")  # the state a kill between the two renames leaves
    assert model_mod.load_export(run)[2]["global_step"] == 5

    def broken(self, *args, **kwargs):
        raise OSError("killed while writing export.tmp")

    monkeypatch.setattr(type(lm), "save_pretrained", broken)
    with pytest.raises(OSError):
        model_mod.save_export(lm, vocab, run / "export", {"global_step": 10})
    assert (run / "export").is_dir() and not (run / "export.old").exists()
    assert model_mod.load_export(run)[2]["global_step"] == 5

    monkeypatch.undo()
    model_mod.save_export(lm, vocab, run / "export", {"global_step": 10})
    assert model_mod.load_export(run)[2]["global_step"] == 10
    assert sorted(p.name for p in run.iterdir()) == ["export"]


class Killed(BaseException):
    """Stands for SIGKILL: nothing in poetry_gpt catches it, so no clean-up runs after it."""


@pytest.mark.slow
def test_a_kill_at_any_step_of_the_export_swap_leaves_an_export_plain_transformers_loads(tmp_path, monkeypatch):
    """``save_export`` is stopped before each of its folder-level steps in turn (deleting ``export.tmp``,
    the swap, deleting the old export); after every stop ``TFGPT2LMHeadModel.from_pretrained(RUN/export)``
    loads the old or the new export, and the next ``save_export`` leaves only ``export/``."""
    import shutil

    import poetry_gpt.fsutil as fsutil
    import poetry_gpt.model.export as model_mod

    probe = tmp_path / "probe"
    (probe / "a").mkdir(parents=True)
    (probe / "b").mkdir()
    if not fsutil.exchange(probe / "a", probe / "b"):
        pytest.skip("this file system has no atomic exchange (renameat2); the two-rename fallback is used")
    lm, vocab = _tiny_model_and_vocab(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    model_mod.save_export(lm, vocab, run / "export", {"global_step": 0})
    calls = {"n": 0, "kill_at": 0}

    def killable(fn):
        def wrapper(*args, **kwargs):
            if Path(args[0]).parent == run:  # a step on export/, export.tmp/ or export.old/ themselves
                calls["n"] += 1
                if calls["n"] == calls["kill_at"]:
                    raise Killed(f"step {calls['n']}: {fn.__name__}{tuple(str(a) for a in args)}")
            return fn(*args, **kwargs)
        return wrapper

    for name, module in (("replace", os), ("rename", os), ("rmtree", shutil), ("exchange", fsutil)):
        monkeypatch.setattr(module, name, killable(getattr(module, name)), raising=False)
    steps_seen, current = [], 0
    for kill_at in range(1, 20):
        calls.update(n=0, kill_at=kill_at)
        try:
            model_mod.save_export(lm, vocab, run / "export", {"global_step": kill_at})
        except Killed as exc:
            steps_seen.append(str(exc))
            loaded = plain_load(run / "export")["global_step"]
            assert loaded in (current, kill_at), (exc, loaded, current)  # the export before, or the new one
            current = loaded
            continue
        assert plain_load(run / "export")["global_step"] == kill_at
        break
    assert 3 <= len(steps_seen) < 19, steps_seen  # killed at every step, then one call ran to its end
    monkeypatch.undo()
    model_mod.save_export(lm, vocab, run / "export", {"global_step": 99})
    assert plain_load(run / "export")["global_step"] == 99
    assert sorted(p.name for p in run.iterdir()) == ["export"]
