"""Multi-worker training for real, chief/non-chief file ownership, and unwritable / full RUN_DIRs.

The cluster tests start two ``poetry-gpt train --strategy multi-worker`` processes on 127.0.0.1
(``TF_CONFIG`` with two workers, task 0 = chief) on a generated corpus, ``tiny`` preset in fp32:

* the chief writes checkpoints, export, samples, run.json and trainer_state.json; the non-chief
  writes nothing in RUN_DIR and its temporary checkpoint folder is gone when it exits;
* a single process (``--strategy default``) resumes the chief's checkpoint at step 5;
* a two-worker cluster resumes the chief's checkpoint too, and its steps 6–10 reach the same loss
  as the single process's;
* what each worker's training step actually received is recorded (``ROW_RECORDER``, test-only: no
  cost in normal runs): at every step the two workers' rows are disjoint halves that together are
  exactly the global batch an uninterrupted single process consumes (``train_dataset`` from step 0),
  so a duplicated or skipped shard fails (loss comparisons alone would pass a duplicated batch);
* workers that resume different steps (RUN_DIR not shared) are refused with a one-line error.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import cli, prepared_data, write_raw

CHARS = "春花秋月山水风云天地人心江河日夜雪雨"
CLUSTER_TIMEOUT = 180  # seconds for a whole two-worker run, start-up included
SINGLE_TIMEOUT = 120
RUN_ENTRIES = {"run.json", "trainer_state.json", "checkpoints", "export", "logs", "samples", "tokenizer.json",
               "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"}

# `poetry-gpt` whose training step also appends the rows it received (one JSON line per step) to
# $ROWS_DIR/worker<task index>.jsonl: a test-only wrapper around trainer.build_lm_trainer, so normal
# runs carry no recording op at all.
ROW_RECORDER = """
import json, os
import poetry_gpt.train.trainer as trainer_mod

def recording(build):
    def wrapped(*args, **kwargs):
        import tensorflow as tf
        trainer = build(*args, **kwargs)
        step = trainer.train_step
        index = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {}).get("index", 0)
        path = os.path.join(os.environ["ROWS_DIR"], f"worker{index}.jsonl")

        def write(ids):
            with open(path, "a") as f:
                f.write(json.dumps(ids.numpy().tolist()) + "\\n")
            return tf.constant(0)

        def train_step(batch):
            tf.py_function(write, [batch["input_ids"]], tf.int32)
            return step(batch)

        trainer.train_step = train_step
        return trainer
    return wrapped

trainer_mod.build_lm_trainer = recording(trainer_mod.build_lm_trainer)
from poetry_gpt.cli import main
main()
"""






def child_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", **extra)
    return env


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def command(rows: Path | None) -> list[str]:
    """``poetry-gpt``; with ``rows``, the one that records each step's rows there (``ROW_RECORDER``)."""
    return cli() if rows is None else [sys.executable, "-c", ROW_RECORDER]


def fresh_rows_dir(rows: Path | None) -> dict:
    """Empty ``rows`` (a retried start must not append to a failed one's records); the child's env."""
    if rows is None:
        return {}
    shutil.rmtree(rows, ignore_errors=True)
    rows.mkdir(parents=True)
    return {"ROWS_DIR": str(rows)}


def run_single(args: list[str], log: Path, timeout: float = SINGLE_TIMEOUT, rows: Path | None = None,
               **env) -> tuple[int, str]:
    with open(log, "w") as out:
        proc = subprocess.run(command(rows) + args, stdout=out, stderr=subprocess.STDOUT,
                              env=child_env(**env, **fresh_rows_dir(rows)), timeout=timeout)
    return proc.returncode, log.read_text(errors="replace")


def run_cluster(args, logs: Path, tmpdir: Path, tries: int = 2, rows: Path | None = None) -> list[tuple[int, str]]:
    """Run ``poetry-gpt train ARGS`` as a two-worker cluster on 127.0.0.1; ``[(code, output)]`` per worker.

    ``args`` is a list for both workers, or a function of the worker index giving each its own.
    With ``rows``, each worker records the rows of every training step there (``ROW_RECORDER``).

    Both workers are killed if either fails or the cluster outlives ``CLUSTER_TIMEOUT``. A start that
    lost its port to another process (between choosing it and binding it) is retried.
    """
    logs.mkdir(parents=True, exist_ok=True)
    for attempt in range(tries):
        ports = free_ports(2)
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        rows_env = fresh_rows_dir(rows)
        procs, files = [], []
        for index in range(2):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            f = open(logs / f"worker{index}-try{attempt}.log", "w")
            files.append(f)
            procs.append(subprocess.Popen(command(rows) + ["train"] + (args(index) if callable(args) else args),
                                          stdout=f, stderr=subprocess.STDOUT,
                                          env=child_env(TF_CONFIG=tf_config, TMPDIR=str(tmpdir), **rows_env),
                                          start_new_session=True))
        deadline = time.monotonic() + CLUSTER_TIMEOUT
        try:
            while any(p.poll() is None for p in procs):
                if time.monotonic() > deadline:
                    raise AssertionError(f"multi-worker run did not finish in {CLUSTER_TIMEOUT} s")
                if any(p.poll() not in (None, 0) for p in procs):
                    time.sleep(2)  # let the other worker report, then stop it: it would wait for ever
                    break
                time.sleep(0.2)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
            for f in files:
                f.close()
        results = [(p.returncode, (logs / f"worker{i}-try{attempt}.log").read_text(errors="replace"))
                   for i, p in enumerate(procs)]
        port_lost = any(re.search(r"address already in use|Failed to add port|bind", out, re.I)
                        for code, out in results if code)
        if not port_lost:
            return results
    return results


def keras_loss(output: str) -> float:
    """The loss of the last Keras epoch line (``5/5 - 3s - loss: 7.81 - val_loss: …``)."""
    found = re.findall(r"- loss: ([0-9.]+)", output)
    assert found, output[-3000:]
    return float(found[-1])


def assert_rows_split_the_global_stream(rows: Path, run: Path, data: Path, first_step: int, steps: int,
                                        workers: int) -> None:
    """Each step, the workers' recorded rows are ``1/workers`` of the global batch each and together all of it.

    The global batches are those an uninterrupted single process consumes: ``train_dataset`` from
    step 0 with the run's seed, batch size and context, at steps ``first_step … first_step + steps − 1``.
    """
    from poetry_gpt.data.manifest import load_manifest
    from poetry_gpt.data.datasets import train_dataset

    config = json.loads((run / "run.json").read_text(encoding="utf-8"))["config"]
    batch, n_ctx = config["train"]["batch_size"], config["model"]["n_ctx"]
    stream = train_dataset(load_manifest(data), batch, n_ctx, seed=config["train"]["seed"])
    expected = [b["input_ids"].numpy().tolist() for b in stream.skip(first_step).take(steps)]
    consumed = [[json.loads(line) for line in (rows / f"worker{i}.jsonl").read_text().splitlines()]
                for i in range(workers)]
    assert [len(c) for c in consumed] == [steps] * workers, "steps recorded per worker"
    for k, global_batch in enumerate(expected):
        assert len({tuple(r) for r in global_batch}) == batch  # distinct rows: a repeat cannot hide
        mine = [consumed[i][k] for i in range(workers)]
        assert [len(m) for m in mine] == [batch // workers] * workers, f"step {first_step + k + 1}: rows per worker"
        assert sorted(r for m in mine for r in m) == sorted(global_batch), \
            f"step {first_step + k + 1}: the workers' rows are not the global batch, each row once"


def train_args(data: Path, run: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--run", str(run), "--config", "tiny", "--precision", "fp32",
            "--steps-per-epoch", "5", "--quiet", *extra]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepared_data(tmp_path_factory.mktemp("mw-data"), 200)


@pytest.fixture(scope="module")
def cluster_run(data_dir, tmp_path_factory):
    """A fresh two-worker run: 1 epoch × 5 steps. Returns ``(run_dir, results, worker_tmpdir)``."""
    base = tmp_path_factory.mktemp("mw-run")
    tmpdir = base / "worker-tmp"
    tmpdir.mkdir()
    run = base / "run"
    results = run_cluster(train_args(data_dir, run, "--strategy", "multi-worker", "--epochs", "1",
                                     "--samples-per-epoch", "1"), base / "logs", tmpdir, rows=base / "rows")
    for index, (code, out) in enumerate(results):
        assert code == 0, f"worker {index} exited with {code}:\n{out[-4000:]}"
    return run, results, tmpdir


@pytest.fixture(scope="module")
def single_resume(cluster_run, tmp_path_factory):
    """A copy of the cluster's run resumed by one process to epoch 2. Returns ``(run_dir, output)``."""
    run = tmp_path_factory.mktemp("mw-single") / "run"
    shutil.copytree(cluster_run[0], run)
    code, out = run_single(["train", "--run", str(run), "--epochs", "2", "--strategy", "default", "--quiet"],
                           run.parent / "single.log", rows=run.parent / "rows")
    assert code == 0, out[-4000:]
    return run, out


# --- the cluster ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_workers_consume_disjoint_halves_of_each_global_batch(cluster_run, data_dir):
    run = cluster_run[0]
    assert_rows_split_the_global_stream(run.parent / "rows", run, data_dir, 0, 5, workers=2)


@pytest.mark.slow
def test_two_workers_train_and_only_the_chief_writes(cluster_run):
    run, ((code0, chief_out), (code1, worker_out)), tmpdir = cluster_run
    for out in (chief_out, worker_out):
        assert "2 replica(s)" in out, out[-3000:]
        assert re.search(r"Trained to step 5 \(epoch 1\)", out), out[-3000:]
    # both workers report the same global loss (the metric is summed over the cluster)
    assert keras_loss(chief_out) == pytest.approx(keras_loss(worker_out), abs=1e-4)
    # the chief reports the epoch and its samples; the non-chief does not
    assert "epoch 1: step 5" in chief_out and "export/ updated" in chief_out
    assert "epoch 1: step 5" not in worker_out

    # RUN_DIR holds the chief's files only: one checkpoint, no worker folder, no temporaries
    assert {e.name for e in run.iterdir()} == RUN_ENTRIES, sorted(e.name for e in run.iterdir())
    assert sorted(e.name for e in (run / "checkpoints").iterdir()) == [
        "checkpoint", "ckpt-5.data-00000-of-00001", "ckpt-5.index"]
    assert [e.name for e in (run / "samples").iterdir()] == ["epoch-001.txt"]
    state = json.loads((run / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["global_step"] == 5 and state["epoch"] == 1 and len(state["history"]) == 1
    assert json.loads((run / "run.json").read_text(encoding="utf-8"))["config"]["train"]["strategy"] == "multi-worker"
    assert json.loads((run / "export" / "poetry_gpt.json").read_text(encoding="utf-8"))["global_step"] == 5
    # the non-chief's temporary checkpoint folder (in its TMPDIR) was deleted when it exited
    assert not list(tmpdir.glob("poetry-gpt-worker-*")), list(tmpdir.iterdir())


@pytest.mark.slow
def test_one_process_resumes_the_chief_checkpoint(single_resume, data_dir):
    from poetry_gpt.model.export import load_export

    run, out = single_resume
    assert re.search(r"Resumed .* from ckpt-5: step 5, epoch 1", out), out[-3000:]
    # the single process's steps 6–10 took the whole global batches 5–9 of the stream
    assert_rows_split_the_global_stream(run.parent / "rows", run, data_dir, 5, 5, workers=1)
    assert "1 replica(s)" in out and "Trained to step 10 (epoch 2)" in out, out[-3000:]
    state = json.loads((run / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["global_step"] == 10 and [h["epoch"] for h in state["history"]] == [1, 2]
    lm, vocab, meta = load_export(run)
    assert meta["global_step"] == 10 and lm.config.vocab_size == vocab.size


@pytest.mark.slow
def test_cluster_resumes_and_matches_one_process(cluster_run, single_resume, data_dir, tmp_path_factory):
    """Two workers resume the chief's checkpoint; steps 6–10 give the single process's loss."""
    base = tmp_path_factory.mktemp("mw-resume")
    run = base / "run"
    shutil.copytree(cluster_run[0], run)
    tmpdir = base / "worker-tmp"
    tmpdir.mkdir()
    results = run_cluster(["--run", str(run), "--epochs", "2", "--strategy", "multi-worker", "--quiet"],
                          base / "logs", tmpdir, rows=base / "rows")
    for index, (code, out) in enumerate(results):
        assert code == 0, f"worker {index} exited with {code}:\n{out[-4000:]}"
        assert re.search(r"Resumed .* from ckpt-5: step 5", out), out[-3000:]
        assert "Trained to step 10 (epoch 2)" in out, out[-3000:]
    single_state = json.loads((single_resume[0] / "trainer_state.json").read_text(encoding="utf-8"))
    cluster_state = json.loads((run / "trainer_state.json").read_text(encoding="utf-8"))
    assert cluster_state["global_step"] == 10
    assert cluster_state["history"][-1]["loss"] == pytest.approx(single_state["history"][-1]["loss"], abs=1e-3)
    assert cluster_state["history"][-1]["val_loss"] == pytest.approx(single_state["history"][-1]["val_loss"], abs=1e-3)
    assert sorted(e.name for e in (run / "checkpoints").iterdir() if e.name.startswith("ckpt-10")) == [
        "ckpt-10.data-00000-of-00001", "ckpt-10.index"]
    assert not list(tmpdir.glob("poetry-gpt-worker-*"))
    # steps 6–10: each worker took its own half of the global batches 5–9, none twice, none skipped
    assert_rows_split_the_global_stream(base / "rows", run, data_dir, 5, 5, workers=2)


@pytest.mark.slow
def test_workers_that_resume_different_steps_are_refused(cluster_run, data_dir, tmp_path):
    """A non-chief that cannot see the chief's RUN_DIR would train from other weights: refused."""
    run = tmp_path / "run"
    shutil.copytree(cluster_run[0], run)
    elsewhere = tmp_path / "not-shared"
    results = run_cluster(lambda i: train_args(data_dir, run if i == 0 else elsewhere, "--strategy", "multi-worker",
                                               "--epochs", "2"), tmp_path / "logs", tmp_path)
    for index, (code, out) in enumerate(results):
        assert code == 1, f"worker {index} exited with {code}:\n{out[-3000:]}"
        errors = [line for line in out.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "the workers resumed different steps" in errors[0], out[-3000:]
        assert "Traceback" not in out
    assert not elsewhere.exists() and not list(tmp_path.glob("poetry-gpt-worker-*"))
    state = json.loads((run / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["global_step"] == 5


# --- chief / non-chief logic (no cluster) -----------------------------------------------------------

@pytest.mark.parametrize("fault", [None, "duplicated", "skipped", "one-step-late"])
def test_row_check_fails_on_a_duplicated_or_skipped_shard(data_dir, tmp_path, fault):
    """The check the cluster tests apply to the recorded rows, on made-up records of each fault."""
    from poetry_gpt.data.manifest import load_manifest
    from poetry_gpt.data.datasets import train_dataset

    run = tmp_path / "run"
    run.mkdir()
    config = {"train": {"batch_size": 8, "seed": 5}, "model": {"n_ctx": 64}}
    (run / "run.json").write_text(json.dumps({"config": config}), encoding="utf-8")
    batches = [b["input_ids"].numpy().tolist()
               for b in train_dataset(load_manifest(data_dir), 8, 64, seed=5).skip(2).take(4)]
    halves = {0: [b[:4] for b in batches[:3]], 1: [b[4:] for b in batches[:3]]}
    if fault == "duplicated":  # every worker trains on the whole global batch
        halves = {0: [b for b in batches[:3]], 1: [b for b in batches[:3]]}
    elif fault == "skipped":  # both take the first half: the second half is never trained on
        halves[1] = halves[0]
    elif fault == "one-step-late":  # worker 1 reads the stream one batch behind
        halves[1] = [b[4:] for b in batches[1:4]]
    rows = tmp_path / "rows"
    rows.mkdir()
    for index, steps in halves.items():
        (rows / f"worker{index}.jsonl").write_text("".join(json.dumps(h) + "\n" for h in steps))
    if fault is None:
        assert_rows_split_the_global_stream(rows, run, data_dir, 2, 3, workers=2)
    else:
        with pytest.raises(AssertionError, match="rows per worker|not the global batch"):
            assert_rows_split_the_global_stream(rows, run, data_dir, 2, 3, workers=2)


@pytest.mark.parametrize("tf_config, strategy, chief", [
    (None, "multi-worker", True),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}, "multi-worker", True),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}, "multi-worker", False),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}, "auto", False),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}, "default", True),
    ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}, "multi-worker", True),
    ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, "multi-worker", False),
])
def test_is_chief(monkeypatch, tf_config, strategy, chief):
    from poetry_gpt.train.distribute import is_chief

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert is_chief(strategy) is chief


@pytest.mark.parametrize("value, message", [
    ("{not json", "TF_CONFIG: not a valid cluster description"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}), "not in the cluster"),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), "TF_CONFIG: not a valid cluster description"),
])
def test_bad_tf_config_is_a_clear_error(monkeypatch, value, message):
    from poetry_gpt.train.distribute import is_chief, make_strategy
    from poetry_gpt.errors import PoetryGPTError

    monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(PoetryGPTError, match=re.escape(message)):
        is_chief("multi-worker")
    with pytest.raises(PoetryGPTError, match=re.escape(message)):
        make_strategy("multi-worker")


def test_multi_worker_without_tf_config_is_refused(monkeypatch):
    from poetry_gpt.train.distribute import make_strategy
    from poetry_gpt.errors import PoetryGPTError

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(PoetryGPTError, match="needs TF_CONFIG"):
        make_strategy("multi-worker")


def test_non_chief_saves_in_a_temporary_folder_that_goes_away(tmp_path, monkeypatch):
    import gc

    import tensorflow as tf

    from poetry_gpt.train.distribute import checkpoint_managers

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    run_ckpts = tmp_path / "run" / "checkpoints"
    run_ckpts.mkdir(parents=True)
    v = tf.Variable(1.0)
    chief_save, chief_restore = checkpoint_managers(tf.train.Checkpoint(v=v), run_ckpts, True, 3)
    assert chief_save is chief_restore and Path(chief_save.directory) == run_ckpts
    chief_save.save(checkpoint_number=7)

    save, restore = checkpoint_managers(tf.train.Checkpoint(v=v), run_ckpts, False, 3)
    private = Path(save.directory)
    assert private.parent == tmp_path / "tmp" and private.name.startswith("poetry-gpt-worker-")
    assert Path(restore.directory) == run_ckpts and restore.latest_checkpoint.endswith("ckpt-7")
    save.save(checkpoint_number=8)
    assert (private / "ckpt-8.index").is_file()
    assert sorted(e.name for e in run_ckpts.iterdir()) == ["checkpoint", "ckpt-7.data-00000-of-00001", "ckpt-7.index"]
    del save
    gc.collect()
    assert not private.exists()


def test_batch_must_split_over_replicas():
    from types import SimpleNamespace

    from poetry_gpt.train.distribute import check_global_batch
    from poetry_gpt.errors import PoetryGPTError

    check_global_batch(SimpleNamespace(num_replicas_in_sync=2), 8)
    with pytest.raises(PoetryGPTError, match="--batch-size 9: .* 2 replicas .* multiple of 2"):
        check_global_batch(SimpleNamespace(num_replicas_in_sync=2), 9)


def test_worker_view_of_run_dir_creates_nothing(tmp_path):
    from poetry_gpt.run_dir import open_run

    missing = tmp_path / "not-yet"
    run, resuming = open_run(missing, "worker", overwrite=False)
    assert not resuming and not missing.exists()
    (missing).mkdir()
    (missing / "run.json").write_text("{}", encoding="utf-8")
    assert open_run(missing, "worker", overwrite=False)[1] is True
    assert open_run(missing, "worker", overwrite=True)[1] is False
    assert [e.name for e in missing.iterdir()] == ["run.json"]


# --- unwritable or full RUN_DIR: a clear one-line error before training -----------------------------

def _without_root_override() -> list[str]:
    """A command prefix under which folder permissions apply (root normally ignores them).

    Root keeps every capability but ``CAP_DAC_OVERRIDE`` (``setpriv --bounding-set``), so it still
    reads everything but cannot write into a folder without write permission.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("running as root without util-linux setpriv: cannot make a folder unwritable for root")
    return [setpriv, "--bounding-set=-dac_override", "--"]


@pytest.fixture
def locked_dir(tmp_path):
    """A folder to make read-only (0555); writable again afterwards so that tmp_path can be removed."""
    path = tmp_path / "locked"
    path.mkdir()
    yield path
    path.chmod(0o755)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["new-run-in-read-only-folder", "read-only-run-dir"])
def test_unwritable_run_dir_is_refused_before_training(tmp_path, locked_dir, case):
    data = tmp_path / "data"
    _prepare_small(tmp_path, data)
    if case == "new-run-in-read-only-folder":
        run = locked_dir / "run"
        expected = "cannot create the run folder"
    else:
        run = locked_dir
        for sub in ("checkpoints", "logs", "samples"):  # left by an earlier start: only the write probe fails
            (run / sub).mkdir()
        expected = "cannot write there"
    locked_dir.chmod(0o555)
    prefix = _without_root_override()
    before = sorted(str(p) for p in locked_dir.rglob("*"))
    proc = subprocess.run(prefix + cli() + ["train", "--data", str(data), "--run", str(run), "--config", "tiny",
                                            "--steps-per-epoch", "2"],
                          capture_output=True, text=True, timeout=SINGLE_TIMEOUT, env=child_env())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and expected in errors[0] and str(run) in errors[0], proc.stderr
    assert "Permission denied" in errors[0] and "choose a writable folder" in errors[0]
    assert "Traceback" not in proc.stderr and "Training" not in proc.stdout
    assert sorted(str(p) for p in locked_dir.rglob("*")) == before


def test_run_dir_below_a_file_is_refused(tmp_path):
    from click.testing import CliRunner

    from poetry_gpt.cli import main

    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder", encoding="utf-8")
    data = tmp_path / "data"
    _prepare_small(tmp_path, data)
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--run", str(blocker / "run"),
                                       "--config", "tiny"])
    assert result.exit_code == 1, result.output
    lines = [l for l in result.output.splitlines() if l.startswith("Error:")]
    assert len(lines) == 1 and "cannot create the run folder" in lines[0] and "Not a directory" in lines[0], result.output
    assert blocker.read_text(encoding="utf-8") == "not a folder"


def test_full_disk_is_refused_before_training(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from poetry_gpt.cli import main

    data = tmp_path / "data"
    _prepare_small(tmp_path, data)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=3_000_000))
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--run", str(run), "--config", "small"])
    assert result.exit_code == 1, result.output
    lines = [l for l in result.output.splitlines() if l.startswith("Error:")]
    assert len(lines) == 1, result.output
    assert re.search(r"--run .*run: only 3 MB free, checkpoints need about \d+ MB", lines[0]), lines[0]
    assert "Training" not in result.output
    assert not (run / "run.json").exists() and not any((run / "checkpoints").iterdir())


def _prepare_small(folder: Path, data: Path) -> None:
    from poetry_gpt.config import DataConfig
    from poetry_gpt.data.prepare import prepare

    prepare([write_raw(folder / "raw.txt", 60)], data, DataConfig(valid_fraction=0.05), n_ctx=64)
