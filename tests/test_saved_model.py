"""`poetry-gpt export`: the SavedModel of a trained `tiny` run, loaded by a process that has only TensorFlow.

One run is trained and exported once per module (about a minute on a loaded 2-core machine).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import poetry_gpt  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from poetry_gpt.serve.saved_model import ASSET, INPUTS, OUTPUTS

from helpers import failure_text, write_raw

README = Path(__file__).resolve().parents[1] / "README.md"
# (prompts, options): every request is also run through PoemGenerator; 2 rows run at batch 2 in both
REQUESTS = [
    (["春花", "山水风云"], {"seed": 7}),
    (["春花"], {"seed": 3, "form": "五绝"}),
    (["春"], {"seed": 11, "form": "五绝", "acrostic": "春花", "rhyme": True, "top_k": 5, "top_p": 0.9}),
    ([""], {"seed": 5, "title": "春山", "temperature": 0.7, "min_p": 0.0, "repetition_penalty": 1.3}),
    (["云天 唐诗：【日夜"], {"seed": 2, "max_new_tokens": 12}),
]
DEFAULTS = {name: default for name, _, _, default, _ in INPUTS if name != "prompt"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A trained tiny RUN_DIR and its SavedModel, written by the CLI, then refused and replaced (--overwrite)."""
    from click.testing import CliRunner

    from poetry_gpt.cli import main
    from poetry_gpt.config import DataConfig, config_from_preset
    from poetry_gpt.data.prepare import prepare
    from poetry_gpt.train.loop import train

    root = tmp_path_factory.mktemp("saved_model")
    prepare([write_raw(root / "raw.txt", 150)], root / "data", DataConfig(valid_fraction=0.1), n_ctx=64)
    cfg = config_from_preset("tiny").replace(train=dict(epochs=1, steps_per_epoch=3, samples_per_epoch=0,
                                                        precision="fp32"))
    train(root / "data", root / "run", cfg, echo=lambda line: None, verbose=0)
    out = root / "poet"
    args = ["export", "--run", str(root / "run"), "--saved-model", str(out), "--batch-sizes", "2,1"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    (out / "stale.txt").write_text("from the first export")
    refused = CliRunner().invoke(main, args)
    written = CliRunner().invoke(main, args + ["--overwrite"])
    return {"root": root, "run": root / "run", "out": out, "refused": refused, "written": written}


@pytest.fixture(scope="module")
def loaded(exported):
    import tensorflow as tf

    return tf.saved_model.load(str(exported["out"]))


def _call(signature, prompts, **options):
    """The serving signature with every input given; outputs as Python lists (strings decoded)."""
    import tensorflow as tf

    dtypes = {name: dtype for name, dtype, _, _, _ in INPUTS}
    feed = {name: tf.constant(value, getattr(tf, dtypes[name])) for name, value in {**DEFAULTS, **options}.items()}
    out = signature(prompt=tf.constant(prompts, tf.string), **feed)
    return {k: [x.decode() if isinstance(x, bytes) else x for x in v.numpy().tolist()] for k, v in out.items()}


def test_export_refuses_an_existing_folder_then_overwrites_it_and_records_its_source(exported):
    refused, written, out = exported["refused"], exported["written"], exported["out"]
    assert refused.exit_code == 1 and "--saved-model" in refused.output and "--overwrite" in refused.output
    assert written.exit_code == 0, written.output
    assert not (out / "stale.txt").exists() and (out / "saved_model.pb").is_file()
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith((".poet", "poet."))) == []
    info = json.loads((out / "assets" / ASSET).read_text(encoding="utf-8"))
    assert info["source"]["run"] == str(exported["run"].resolve()) and info["source"]["global_step"] == 3
    assert info["tensorflow"] and info["transformers"] and info["poetry_gpt_version"]
    assert info["batch_sizes"] == [1, 2] and list(info["inputs"]) == [name for name, *_ in INPUTS]


def test_a_failed_export_leaves_the_old_folder_and_no_temporary_one(exported, tmp_path, monkeypatch):
    import tensorflow as tf

    from poetry_gpt.serve.saved_model import export_saved_model

    out = tmp_path / "poet"
    shutil.copytree(exported["out"], out)  # an earlier SavedModel: the one kind --overwrite replaces
    (out / "mine.txt").write_text("keep me")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(exported["run"], out, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["poet"] and (out / "mine.txt").read_text() == "keep me"


def test_overwrite_never_replaces_a_folder_export_did_not_write_nor_the_run(exported, tmp_path):
    """A non-empty folder without assets/poetry_gpt.json, the run itself, or a folder inside the run are
    refused even with --overwrite, and nothing in them changes."""
    from click.testing import CliRunner

    from poetry_gpt.cli import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    run = exported["run"]
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for out, fragment in ((mine, "not a SavedModel written by `poetry-gpt export`"), (run, "holds or lies inside"),
                          (run / "poet", "holds or lies inside"), (run / "export", "holds or lies inside")):
        result = CliRunner().invoke(main, ["export", "--run", str(run), "--saved-model", str(out), "--overwrite"])
        assert result.exit_code == 1 and fragment in result.output, result.output
    assert (mine / "notes.txt").read_text() == "keep me" and [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_a_tensorflow_only_process_writes_the_poems_of_poem_generator(exported):
    """A process that cannot import poetry_gpt, transformers or tf_keras loads the SavedModel; its poems
    equal PoemGenerator's for the same prompts, options and seeds (free, forms, acrostic, rhyme, title)."""
    from poetry_gpt.generate.generator import PoemGenerator

    script = textwrap.dedent(f"""
        import json, sys
        class Blocked:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("poetry_gpt", "transformers", "tf_keras"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Blocked())
        import tensorflow as tf
        loaded = tf.saved_model.load({str(exported["out"])!r})
        dtypes = json.loads({json.dumps({name: dtype for name, dtype, *_ in INPUTS})!r})
        defaults = json.loads({json.dumps(DEFAULTS)!r})
        results = []
        for prompts, options in json.loads({json.dumps(REQUESTS)!r}):
            feed = {{k: tf.constant(v, getattr(tf, dtypes[k])) for k, v in {{**defaults, **options}}.items()}}
            out = loaded.signatures["serving_default"](prompt=tf.constant(prompts), **feed)
            results.append({{k: [x.decode() if isinstance(x, bytes) else x for x in v.numpy().tolist()]
                             for k, v in out.items()}})
        # the module's own function applies the documented defaults
        short = loaded.generate(prompt=["春花"], seed=7)
        results.append({{k: [x.decode() if isinstance(x, bytes) else x for x in v.numpy().tolist()]
                         for k, v in short.items()}})
        leaked = [m for m in sys.modules if m.split(".")[0] in ("poetry_gpt", "transformers", "tf_keras")]
        print(json.dumps({{"results": results, "leaked": leaked}}, ensure_ascii=False))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          cwd=exported["root"], env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, failure_text(proc.stderr)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["leaked"] == []
    gen = PoemGenerator(exported["run"])
    for (prompts, options), got in zip(REQUESTS + [(["春花"], {"seed": 7})], report["results"]):
        options = {**options, "max_new_tokens": options.get("max_new_tokens") or None}
        samples = gen.generate([p for p in prompts if p], batch_size=8, **options)
        assert got["error"] == [""] * len(prompts)
        assert got["poem"] == [s.text for s in samples], options
        assert got["closed"] == [s.closed for s in samples] and got["tokens"] == [s.tokens for s in samples]
        assert got["seed"] == [s.seed for s in samples]


def test_saved_model_cli_lists_the_documented_signature(exported):
    cli = Path(sys.executable).parent / "saved_model_cli"
    proc = subprocess.run([str(cli), "show", "--dir", str(exported["out"]), "--all"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, failure_text(proc.stderr)
    serving = proc.stdout.split("signature_def['serving_default']:")[1].split("signature_def[")[0]
    inputs, outputs = serving.split("output(s):")
    readme = README.read_text(encoding="utf-8")
    enum = {"float32": "FLOAT"}  # the proto's names of the other dtypes are their upper case
    for name, dtype, shape, _, _ in INPUTS:
        assert re.search(rf"inputs\['{name}'\] tensor_info:\s+dtype: DT_{enum.get(dtype, dtype.upper())}\s+"
                         rf"shape: \({'-1' if shape else ''}\)", inputs), name
        assert f"`{name}`" in readme
    for name, dtype, _ in OUTPUTS:
        assert re.search(rf"outputs\['{name}'\] tensor_info:\s+dtype: DT_{dtype.upper()}\s+shape: \(-1\)",
                         outputs), name
        assert f"`{name}`" in readme
    assert len(re.findall(r"inputs\['", inputs)) == len(INPUTS)
    assert len(re.findall(r"outputs\['", outputs)) == len(OUTPUTS)


def test_bad_rows_get_an_error_string_and_the_others_their_poem(loaded):
    signature = loaded.signatures["serving_default"]
    out = _call(signature, ["春X", "春花山水风云", "春花", "云 唐诗：【】"], form="五绝", seed=1)
    assert re.fullmatch(r"prompt: 1 character\(s\) not in the model's vocabulary \(\d+ tokens\): 'X'; replace them "
                        r"with common \(simplified\) characters the corpus uses, or leave them out", out["error"][0])
    assert out["error"][1] == "prompt: '唐诗：【春花山水风云' cannot begin a 五绝: '云' does not fit there"
    assert out["error"][2] == "" and out["poem"][2].startswith("唐诗：【春花") and out["tokens"][2] > 0
    assert "already has the closing 】" in out["error"][3]
    assert out["poem"][:2] == ["", ""] and out["tokens"][:2] == [0, 0] and out["closed"][:2] == [False, False]
    assert out["seed"] == [1, 2, 3, 4]
    out = _call(signature, ["云 唐诗：【春【", "春花"], seed=1)  # free sampling: one header per poem
    assert out["error"] == ["prompt: '云 唐诗：【春【' has a second '【' inside the poem; give one header", ""]


@pytest.mark.parametrize("options, message", [
    ({"top_k": 0}, "top_k: must be ≥ 1 (1 = greedy), got 0"),
    ({"top_p": 1.5}, "top_p: must be in (0, 1] (1 = off), got 1.5"),
    ({"form": "六绝"}, "form: unknown form '六绝'; choose one of 五绝, 七绝, 五律, 七律 (or 五言绝句, 七言绝句, "
                      "五言律诗, 七言律诗)"),
    ({"acrostic": "春"}, "acrostic: needs form (五绝, 七绝, 五律, 七律)"),
    ({"form": "五絕", "acrostic": "春花山水风"}, "acrostic: 5 characters but a 五绝 has 4 clauses; give at most 4"),
    ({"form": "五言绝句", "acrostic": "春Q"}, "acrostic: character 'Q' is not in the vocabulary; choose another"),
    ({"form": "五绝", "max_new_tokens": 10}, "max_new_tokens: a 五绝 needs 2"),
    ({"title": "春Z"}, "title: 1 character(s) not in the model's vocabulary"),
])
def test_bad_options_give_every_row_an_error(loaded, options, message):
    out = _call(loaded.signatures["serving_default"], ["", "春花"], **options)
    assert [e[:len(message)] for e in out["error"]] == [message, message]
    assert out["poem"] == ["", ""]
