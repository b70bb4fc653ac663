"""Parameter-efficient fine-tuning, the run side: ``train --init-from BASE --tune METHOD``.

One base run (the ``tiny`` preset, 5 steps) is trained per module; each method then tunes it for 3 steps
(1 epoch) on the same data. Checked: only the intended variables change (the rest bit-identical), the
checkpoint holds only the tuned part, exact resume (weights and losses equal to an uninterrupted run), a
changed base is refused on resume, exports (BitFit/LoRA merged: plain transformers' logits equal the model in
memory; Adapter/Prefix: the export samples the very poems of the model in memory), and one-line errors.
Everything in fp32, so two runs of the same steps give the same bits.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import prepared_data, write_raw

from poetry_gpt.config import DataConfig, config_from_preset
from poetry_gpt.errors import RunDirError
from poetry_gpt.run_dir import resolve_config

METHODS = ("bitfit", "adapter", "prefix", "lora")
STEPS = 3


def tiny(**train):
    """The tiny preset in fp32, 1 epoch × STEPS steps, no samples (unless overridden)."""
    values = dict(precision="fp32", steps_per_epoch=STEPS, epochs=1, samples_per_epoch=0, checkpoint_every=0)
    return config_from_preset("tiny").replace(train={**values, **train})


def run_train(data, run, config, init_from=None):
    """``train`` quietly; returns ``(result, training, lines)`` (the ``Training`` it built, spied on)."""
    import poetry_gpt.train.loop as loop

    built, lines = {}, []

    def spy(*args, **kwargs):
        built["training"] = real(*args, **kwargs)
        return built["training"]

    real = loop.build_training
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "build_training", spy)
        result = loop.train(data, run, config, init_from=init_from, echo=lines.append, verbose=0)
    return result, built["training"], lines


def _cli(args):
    from click.testing import CliRunner

    from poetry_gpt.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(result) -> str:
    """The one ``Error: …`` line of a failed CLI call."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("Error")]
    return line


def checkpoint_values(run) -> dict:
    """Every tensor of the run's latest checkpoint by key (the object graph and save counter left out)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(Path(run) / "checkpoints"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if not k.startswith("_CHECKPOINTABLE") and not k.startswith("save_counter")}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return prepared_data(tmp_path_factory.mktemp("peft-data"), 120)


@pytest.fixture(scope="module")
def base(tmp_path_factory, data) -> Path:
    """The base model: a tiny run's export (5 steps)."""
    run = tmp_path_factory.mktemp("peft-base") / "run"
    run_train(data, run, tiny(steps_per_epoch=5))
    return run / "export"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, data, base):
    """``tuned(method)``: ``(run, training, lines)`` of a STEPS-step ``--tune method`` run of ``base`` (made once)."""
    made = {}

    def make(method):
        if method not in made:
            run = tmp_path_factory.mktemp(f"peft-{method}") / "run"
            _, training, lines = run_train(data, run, tiny().replace(tune={"method": method}), init_from=base)
            made[method] = (run, training, lines)
        return made[method]

    return make


def load_base(base):
    from transformers import TFGPT2LMHeadModel

    return TFGPT2LMHeadModel.from_pretrained(str(base))


# --- what trains ---------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_only_the_tuned_variables_change(method, tuned, base):
    from poetry_gpt.model.peft import model_variables
    from poetry_gpt.train.trainer import make_tuning

    run, training, lines = tuned(method)
    fresh = load_base(base)
    before, after = model_variables(fresh), model_variables(training.lm)
    changed = {n for n in before if not np.array_equal(before[n].numpy(), after[n].numpy())}
    if method == "bitfit":
        assert changed and all(n.endswith((".bias", ".beta")) for n in changed), changed
        assert not any(n.endswith((".weight", ".gamma")) or n in ("wte", "wpe") for n in changed)
    else:
        assert changed == set()  # the base model's own variables: bit-identical
    # every added variable left its initial value (the same seed makes the same initial values)
    initial = make_tuning(fresh, training_config(run), None)
    for name, variable in training.tuning.variables.items():
        assert not np.array_equal(variable.numpy(), initial.variables[name].numpy()), name
    # the optimizer has slots for the trainable variables only, and the count is printed
    trainable, total = training.parameter_counts()
    assert trainable == sum(int(np.prod(v.shape)) for v in training.tuning.trainable(training.lm)) < total
    assert any(f"trainable {trainable:,} / total {total:,} parameters" in line for line in lines), lines


def training_config(run):
    return resolve_config(run, None, {}, {})


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_checkpoint_holds_only_the_tuned_part(method, tuned):
    run, training, _ = tuned(method)
    keys = checkpoint_values(run)
    assert not [k for k in keys if k.startswith("model/")]
    tuned_keys = {k.split("/")[1].replace("..", ".") for k in keys if k.startswith("tuned/")}  # "." is escaped
    assert tuned_keys == set(training.tuning.tuned_state(training.lm)), tuned_keys
    moments = [k for k in keys if k.startswith("optimizer/_variables/")]
    assert len(moments) == 2 * len(training.trainable)  # Adam m and v of each trained variable, no others
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["config"]["tune"]["method"] == method and len(recorded["base"]["hash"]) == 64


# --- exact resume, and a changed base ----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_resume_is_exact_and_needs_no_flags(method, tuned, tmp_path, data, base):
    run, _, _ = tuned(method)
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    result = _cli(["train", "--run", resumed, "--epochs", 2, "--quiet"])  # no --tune, no --init-from
    assert result.exit_code == 0, result.output
    assert f"--tune {method}" in result.output
    straight = tmp_path / "straight"
    run_train(data, straight, tiny(epochs=2).replace(tune={"method": method}), init_from=base)
    a, b = checkpoint_values(resumed), checkpoint_values(straight)
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    losses = [[h["loss"] for h in json.loads((r / "trainer_state.json").read_text())["history"]]
              for r in (resumed, straight)]
    assert losses[0] == losses[1]


@pytest.mark.slow
def test_resume_refuses_a_changed_base(tmp_path, data, base):
    copy = tmp_path / "base"
    shutil.copytree(base, copy)
    run = tmp_path / "run"
    run_train(data, run, tiny(steps_per_epoch=2).replace(tune={"method": "lora"}), init_from=copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "summary_type": "mean"}))
    with pytest.raises(RunDirError) as err:
        run_train(None, run, training_config(run).replace(train={"epochs": 2}))
    message = str(err.value)
    assert "\n" not in message and "config.json changed" in message and str(copy) in message
    # the same content elsewhere is accepted with --init-from
    intact = tmp_path / "intact"
    shutil.copytree(base, intact)
    result, _, _ = run_train(None, run, training_config(run).replace(train={"epochs": 2}), init_from=intact)
    assert result.global_step == 4


# --- exports ---------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("method", ["bitfit", "lora"])
def test_merged_export_is_plain_gpt2_with_the_tuned_logits(method, tuned, base):
    import tensorflow as tf
    from transformers import TFGPT2LMHeadModel

    from poetry_gpt.model.fast_forward import gpt2_logits

    run, training, _ = tuned(method)
    assert not (run / "export" / "tuning.npz").exists()
    plain = TFGPT2LMHeadModel.from_pretrained(str(run / "export"))
    ids = tf.constant(np.random.default_rng(0).integers(3, training.lm.config.vocab_size, (2, 40)), tf.int32)
    exported = plain(input_ids=ids).logits.numpy()
    in_memory = gpt2_logits(training.lm, ids, tuning=training.tuning).numpy()
    np.testing.assert_allclose(exported, in_memory, rtol=0, atol=2e-5)  # float32: merged W vs x·A·B apart
    untuned = load_base(base)(input_ids=ids).logits.numpy()
    assert np.abs(exported - untuned).max() > 1e-3  # the tuning did change the model


@pytest.mark.slow
@pytest.mark.parametrize("method", ["adapter", "prefix"])
def test_adapter_prefix_export_loads_the_tuning(method, tuned):
    from transformers import TFGPT2LMHeadModel

    from poetry_gpt.errors import OptionError
    from poetry_gpt.generate.generator import PoemGenerator

    run, training, _ = tuned(method)
    loaded = PoemGenerator(run)
    assert loaded.export.meta["tuning"]["method"] == method
    mine, theirs = training.tuning.variables, loaded.export.tuning.variables
    assert sorted(mine) == sorted(theirs)
    for name in mine:
        np.testing.assert_array_equal(mine[name].numpy(), theirs[name].numpy(), err_msg=name)
    TFGPT2LMHeadModel.from_pretrained(str(run / "export"))  # plain transformers loads the base part
    with pytest.raises(OptionError, match="decoder eager"):
        loaded.generate_eager(None, num_samples=1)


@pytest.mark.parametrize("method", ["adapter", "prefix"])
def test_unmerged_export_holds_the_embedding_update_once(method, tmp_path, base, data):
    """An adapter/prefix export stores the base (and new) rows in plain GPT-2's wte and the embedding update only
    in the tuning file: loaded, its embedding is the one in memory (an update written into wte too would count
    twice)."""
    from poetry_gpt.data.vocab import CharVocab
    from poetry_gpt.generate.generator import PoemGenerator
    from poetry_gpt.model.export import save_export
    from poetry_gpt.train.trainer import make_tuning

    lm, vocab = load_base(base), CharVocab.load(data)
    tuning = make_tuning(lm, tiny().replace(tune={"method": method}), None)
    assert tuning.cfg.embedding_update_rank == 12  # the default
    rng = np.random.default_rng(1)
    for name in ("lora.wte.A", "lora.wte.B"):
        tuning.variables[name].assign(rng.normal(0.0, 0.3, tuning.variables[name].shape).astype(np.float32))
    save_export(lm, vocab, tmp_path / "export", {"genre": "唐诗", "n_ctx": 64}, tuning=tuning)
    loaded = PoemGenerator(tmp_path / "export").export
    assert np.abs(tuning.embedding().numpy() - lm.transformer.wte.embeddings.numpy()).max() > 0.1
    np.testing.assert_allclose(loaded.tuning.embedding().numpy(), tuning.embedding().numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(loaded.model.transformer.wte.embeddings.numpy(), lm.transformer.wte.embeddings.numpy())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["adapter", "prefix"])
def test_adapter_prefix_export_samples_as_the_model_in_memory(method, tmp_path, base, data):
    """Large random tuned values (3 steps move a near-uniform model too little to change a poem), exported and
    loaded: the same poems as the model in memory, other poems than the base alone."""
    from poetry_gpt.data.vocab import CharVocab
    from poetry_gpt.generate.generator import Export, PoemGenerator
    from poetry_gpt.model.export import save_export
    from poetry_gpt.train.trainer import make_tuning

    lm, vocab = load_base(base), CharVocab.load(data)
    tuning = make_tuning(lm, tiny().replace(tune={"method": method}), None)
    rng = np.random.default_rng(0)
    for variable in tuning.variables.values():
        variable.assign(rng.normal(0.0, 3.0, variable.shape).astype(np.float32))
    meta = {"genre": "唐诗", "n_ctx": 64}
    save_export(lm, vocab, tmp_path / "export", meta, tuning=tuning)
    options = dict(num_samples=3, seed=5, max_new_tokens=30)
    loaded = [s.text for s in PoemGenerator(tmp_path / "export").generate(None, **options)]
    memory = PoemGenerator.from_export(Export(Path("<memory>"), lm, vocab, meta, tuning)).generate(None, **options)
    assert loaded == [s.text for s in memory]
    plain = PoemGenerator.from_export(Export(Path("<base>"), lm, vocab, meta)).generate(None, **options)
    assert [s.text for s in plain] != loaded


@pytest.mark.slow
def test_generate_from_a_tuned_checkpoint(tuned):
    from poetry_gpt.generate.generator import PoemGenerator

    run, _, _ = tuned("adapter")
    options = dict(num_samples=2, seed=3, max_new_tokens=20)
    a = [s.text for s in PoemGenerator(run, checkpoint="latest").generate(None, **options)]
    assert a == [s.text for s in PoemGenerator(run).generate(None, **options)]


# --- one-line errors ---------------------------------------------------------------------------------

def test_tune_without_init_from_is_refused(tmp_path, data):
    line = error_line(_cli(["train", "--data", data, "--run", tmp_path / "run", "--config", "tiny",
                            "--tune", "lora"]))
    assert "--tune lora" in line and "--init-from" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, option", [
    (["--tune", "lora", "--lora-rank", "0"], "--lora-rank"),
    (["--tune", "lora", "--lora-alpha", "0"], "--lora-alpha"),
    (["--tune", "lora", "--lora-embedding-rank", "0"], "--lora-embedding-rank"),
    (["--tune", "bitfit", "--lora-embedding-rank", "8"], "--lora-embedding-rank: applies only to --tune lora"),
    (["--tune", "lora", "--lora-targets", "c_attn,wq"], "--lora-targets"),
    (["--tune", "adapter", "--embedding-rank", "-1"], "--embedding-rank: must be ≥ 0"),
    (["--tune", "lora", "--embedding-rank", "4"], "--embedding-rank: applies only to --tune bitfit or adapter or prefix"),
    (["--embedding-rank", "4"], "--embedding-rank: applies only to --tune bitfit"),
    (["--tune", "adapter", "--adapter-size", "0"], "--adapter-size"),
    (["--tune", "prefix", "--prefix-length", "-2"], "--prefix-length"),
    (["--tune", "adapter", "--lora-rank", "4"], "--lora-rank: applies only to --tune lora"),
    (["--prefix-length", "4"], "--prefix-length: applies only to --tune prefix"),
])
def test_bad_tune_options_name_the_option(tmp_path, data, args, option):
    line = error_line(_cli(["train", "--data", data, "--run", tmp_path / "run", "--config", "tiny",
                            "--init-from", tmp_path, *args]))
    assert option in line
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_base_of_another_shape_is_refused(tmp_path, data, base):
    line = error_line(_cli(["train", "--data", data, "--run", tmp_path / "run", "--config", "small",
                            "--init-from", base, "--tune", "lora"]))
    assert f"--init-from {base}" in line and "model shape" in line


@pytest.mark.slow
def test_other_tune_on_resume_is_refused(tuned, tmp_path):
    run, _, _ = tuned("lora")
    line = error_line(_cli(["train", "--run", run, "--epochs", 2, "--tune", "adapter"]))
    assert "fine-tuning differs" in line and "lora" in line and "adapter" in line


# --- new characters (--extend-vocab) --------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_extended_vocab_trains_the_new_rows_only(method, tmp_path, base):
    """A DATA_DIR whose vocabulary extends the base's: the base rows of ``wte`` stay bit-identical, the new rows
    train, and the export holds them (merged for lora; in ``wte`` and ``tuning.npz`` for adapter)."""
    from poetry_gpt.data.manifest import load_manifest
    from poetry_gpt.data.prepare import prepare
    from poetry_gpt.generate.generator import load_model
    from poetry_gpt.model.fast_forward import gpt2_logits

    raw = write_raw(tmp_path / "ci.txt", 60, seed=3, chars="春花秋月山水风云天地人心江河日夜雪雨蝶醉词阙")
    prepare([raw], tmp_path / "data", DataConfig(valid_fraction=0.05), vocab_dir=base, n_ctx=64, extend_vocab=True)
    n_base = load_manifest(tmp_path / "data").base_vocab_size
    run = tmp_path / "run"
    _, training, _ = run_train(tmp_path / "data", run, tiny().replace(tune={"method": method}), init_from=base)
    wte = training.lm.transformer.wte.embeddings.numpy()
    base_wte = load_base(base).transformer.wte.embeddings.numpy()
    assert n_base == base_wte.shape[0] < wte.shape[0]
    np.testing.assert_array_equal(wte[:n_base], base_wte)
    rows = training.tuning.variables["embedding_rows"]
    assert rows.shape[0] == wte.shape[0] - n_base and rows in training.trainable
    assert not np.array_equal(rows.numpy(), wte[n_base:])  # trained away from their initial mean
    export = load_model(run)
    exported = export.model.transformer.wte.embeddings.numpy()
    if method == "adapter":
        np.testing.assert_array_equal(exported[:n_base], base_wte)
        np.testing.assert_array_equal(exported[n_base:], rows.numpy())
    else:  # lora's default targets include wte: the export holds base and new rows moved by its A·B, merged
        A, B = (training.tuning.variables[f"lora.wte.{n}"].numpy() for n in "AB")
        delta = training.tuning.cfg.lora_scale * (A @ B)
        assert np.abs(delta).max() > 0
        np.testing.assert_allclose(exported, np.concatenate([base_wte, rows.numpy()]) + delta, rtol=0, atol=1e-6)
    ids = np.random.default_rng(0).integers(3, wte.shape[0], (1, 30)).astype(np.int32)
    np.testing.assert_allclose(gpt2_logits(export.model, ids, tuning=export.tuning).numpy(),
                               gpt2_logits(training.lm, ids, tuning=training.tuning).numpy(), rtol=0, atol=2e-5)


@pytest.mark.slow
def test_saved_model_of_an_adapter_export_samples_its_poems(tuned, tmp_path):
    """``poetry-gpt export --saved-model`` of an adapter run: the SavedModel holds the adapters and writes the
    poems ``PoemGenerator`` writes."""
    import tensorflow as tf

    from poetry_gpt.generate.generator import PoemGenerator
    from poetry_gpt.serve.saved_model import export_saved_model

    run, _, _ = tuned("adapter")
    export_saved_model(run, tmp_path / "poet", batch_sizes="1")
    loaded = tf.saved_model.load(str(tmp_path / "poet"))
    out = loaded.generate(prompt=["春花"], seed=7)
    expected = PoemGenerator(run).generate(["春花"], seed=7, batch_size=1)
    assert [x.decode() for x in out["poem"].numpy().tolist()] == [s.text for s in expected]


def test_tune_settings_round_trip_and_presets_may_set_them():
    from poetry_gpt.config import RunConfig

    presets = {"ci": {"model": {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_ctx": 64},
                      "tune": {"method": "lora", "lora_rank": 4, "lora_targets": ["c_attn", "c_fc"]}}}
    config = config_from_preset("ci", presets)
    assert config.tune.method == "lora" and config.tune.lora_targets == ("c_attn", "c_fc")
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # run.json keeps it exactly
    assert config.replace(tune={"lora_targets": "c_proj,mlp_c_proj"}).tune.lora_targets == ("c_proj", "mlp_c_proj")
    assert RunConfig.from_dict({"model": {}, "train": {}}).tune.method == "full"  # a run.json of before


# --- the per-method learning rate ------------------------------------------------------------------
def test_new_tune_run_scales_the_preset_learning_rate_per_method(tmp_path, tuned):
    from poetry_gpt.config import TUNE_LR_SCALES

    preset_rate = config_from_preset("tiny").train.learning_rate
    for method in ("full",) + METHODS:
        config = resolve_config(tmp_path / f"new-{method}", "tiny", {}, {}, tune_overrides={"method": method})
        assert config.train.learning_rate == pytest.approx(preset_rate * TUNE_LR_SCALES[method], rel=1e-12)
    assert TUNE_LR_SCALES["lora"] > 1 and TUNE_LR_SCALES["full"] == 1
    given = resolve_config(tmp_path / "given", "tiny", {}, {"learning_rate": 1e-4}, tune_overrides={"method": "lora"})
    assert given.train.learning_rate == 1e-4  # --learning-rate wins
    run, _, _ = tuned("lora")  # a run made at the preset's own rate: a resume keeps what run.json holds
    recorded = json.loads((run / "run.json").read_text())["config"]["train"]["learning_rate"]
    assert resolve_config(run, None, {}, {}).train.learning_rate == recorded


def test_preset_may_set_some_lr_scales():
    from poetry_gpt.config import TUNE_LR_SCALES, OptionError

    presets = {"p": {"train": {"learning_rate": 1e-3}, "tune": {"method": "lora", "lr_scales": {"lora": 4}}}}
    config = config_from_preset("p", presets)
    assert config.tune.lr_scales == {**TUNE_LR_SCALES, "lora": 4}
    with pytest.raises(OptionError, match=r"^tune.lr_scales: .*'qlora'"):
        config.replace(tune={"lr_scales": {"qlora": 2}})
    with pytest.raises(OptionError, match=r"^tune.lr_scales: "):
        config.replace(tune={"lr_scales": {"lora": 0}})


def test_cli_tune_run_says_its_learning_rate(tmp_path, data, base):
    from poetry_gpt.config import TUNE_LR_SCALES

    result = _cli(["train", "--data", data, "--run", tmp_path / "run", "--config", "tiny", "--init-from", base,
                   "--tune", "lora", "--epochs", "1", "--steps-per-epoch", "2", "--samples-per-epoch", "0",
                   "--quiet"])
    assert result.exit_code == 0, result.output
    rate = config_from_preset("tiny").train.learning_rate * TUNE_LR_SCALES["lora"]
    assert f"peak learning rate {rate:.3g}." in result.output
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["config"]["train"]["learning_rate"]
    assert recorded == pytest.approx(rate, rel=1e-12)
