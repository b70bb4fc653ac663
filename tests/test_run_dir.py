"""The RUN_DIR rules in ``poetry_gpt.run_dir``: opening a run, picking a checkpoint, the export's facts."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from poetry_gpt.errors import RunDirError
from poetry_gpt.run_dir import RunDir, data_record, export_meta, open_run


def _run_with_checkpoints(folder, steps) -> RunDir:
    run = RunDir(folder)
    run.checkpoints.mkdir(parents=True)
    run.run_file.write_text(json.dumps({"data": {}, "vocab": {}}), encoding="utf-8")
    for step in steps:
        (run.checkpoints / f"ckpt-{step}.index").write_text("")
    (run.checkpoints / "ckpt-x.index").write_text("")  # not a step: ignored
    return run


def test_checkpoint_refs(tmp_path):
    run = _run_with_checkpoints(tmp_path / "run", [12, 3, 100])
    assert run.checkpoint_steps() == [3, 12, 100]
    assert run.checkpoint("latest") == (100, run.checkpoints / "ckpt-100")
    assert run.checkpoint("12") == run.checkpoint("ckpt-12") == run.checkpoint(" 12 ") == (12, run.checkpoints / "ckpt-12")
    for bad in ("4", "ckpt-4", "ckpt-", "last"):
        with pytest.raises(RunDirError, match=f"--checkpoint {bad}: no such checkpoint in .*; available: latest, 3, 12, 100"):
            run.checkpoint(bad)


def test_checkpoint_refusals(tmp_path):
    with pytest.raises(RunDirError, match="--checkpoint needs a RUN_DIR: .* holds no run.json"):
        RunDir(tmp_path).checkpoint("latest")
    run = _run_with_checkpoints(tmp_path / "run", [])
    with pytest.raises(RunDirError, match="--checkpoint latest: .*checkpoints holds no checkpoint yet"):
        run.checkpoint("latest")


def test_read_mode_refusals(tmp_path):
    with pytest.raises(RunDirError, match="no such RUN_DIR; train one with"):
        open_run(tmp_path / "missing", "read")
    with pytest.raises(RunDirError, match="no run.json, so not a poetry_gpt RUN_DIR"):
        open_run(tmp_path, "read")
    (tmp_path / "run.json").write_text("{}", encoding="utf-8")
    with pytest.raises(RunDirError, match="run.json: lacks the data/vocab records"):
        open_run(tmp_path, "read")
    (tmp_path / "run.json").write_text('{"data": {}, "vocab": {}}', encoding="utf-8")
    assert open_run(tmp_path, "read") == (RunDir(tmp_path), True)
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # reading creates nothing


def test_worker_and_train_modes_refuse_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    for mode in ("worker", "train"):
        with pytest.raises(RunDirError, match="is a file, not a folder"):
            open_run(tmp_path / "f", mode)
    with pytest.raises(ValueError, match="mode must be one of"):
        open_run(tmp_path, "write")


def test_export_meta_from_the_data_record(tmp_path):
    manifest = SimpleNamespace(path=tmp_path, hash="d1", genre="唐诗",
                               data={"genres": {"唐诗": 3}, "cipai": {"浣溪沙": {"poems": 2}}})
    record = data_record(manifest)
    assert record == {"path": str(tmp_path.resolve()), "hash": "d1", "genre": "唐诗", "genres": {"唐诗": 3},
                      "cipai": {"浣溪沙": {"poems": 2}}}
    assert export_meta(record, 64) == {"genre": "唐诗", "genres": {"唐诗": 3}, "n_ctx": 64, "data_hash": "d1",
                                       "cipai": {"浣溪沙": {"poems": 2}}}
    assert export_meta(record, 64, step=5, epoch=1, vocab_hash="v") == {
        **export_meta(record, 64), "global_step": 5, "epoch": 1, "vocab_hash": "v"}
    assert export_meta({}, 32, step=0)["global_step"] == 0 and export_meta({}, 32)["cipai"] == {}
