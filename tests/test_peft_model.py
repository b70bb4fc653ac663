"""The tuning math (poetry_gpt.model.peft): fresh tunings are the base model, the training forward and the sampler
compute the same tuned model, merges are exact, gradients reach only the tuned variables, files round-trip."""
import numpy as np
import pytest

import poetry_gpt  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf

from poetry_gpt.config import ModelConfig
from poetry_gpt.data.vocab import CharVocab
from poetry_gpt.errors import OptionError, RunDirError
from poetry_gpt.model.cached_gpt2 import CachedGPT2
from poetry_gpt.model.fast_forward import gpt2_logits, lm_loss_terms
from poetry_gpt.model.gpt2 import build_model
from poetry_gpt.model.peft import TUNE_METHODS, TuneConfig, Tuning, model_variables

VOCAB = CharVocab(["[PAD]", "[UNK]", "[SEP]"] + [chr(0x4E00 + i) for i in range(97)])  # 100 tokens
SHAPE = ModelConfig(n_layer=2, n_embd=32, n_head=4, n_ctx=16)
BASE_VOCAB = 90  # an --extend-vocab run: ids 90…99 are new rows
SIZES = dict(adapter_size=4, prefix_length=3, lora_rank=2, lora_alpha=4.0, lora_embedding_rank=3, embedding_rank=3,
             lora_targets=("c_attn", "c_proj", "c_fc", "mlp_c_proj", "wte"))
# float32, same function computed by two code paths (merged vs factored LoRA, cache vs full attention): measured
# ≤ 8.3e-6 on these logits (|logits| up to 8); a wrong mask, scale or missing term moves them by > 1e-2
ATOL = 2e-5


def _base(seed=7):
    """A tiny model with non-trivial layer norms and biases (a wrong formula cannot hide behind 1s and 0s)."""
    lm = build_model(SHAPE, VOCAB, seed=seed)
    rng = np.random.default_rng(0)
    for v in lm.trainable_variables:
        if "ln_" in v.name or "bias" in v.name:
            v.assign(v + rng.normal(0, 0.2, v.shape).astype(np.float32))
    return lm


def _copy(lm):
    clone = build_model(SHAPE, VOCAB, seed=99)
    clone.set_weights(lm.get_weights())
    return clone


def _tuning(lm, method, base_vocab=BASE_VOCAB, **sizes):
    return Tuning(lm, TuneConfig(method=method, **{**SIZES, **sizes}), base_vocab_size=base_vocab, seed=3)


def _perturb(lm, tuning, seed=5):
    """Random non-zero values for everything the tuning trains (LoRA's B, the adapters' U are 0 when fresh)."""
    rng = np.random.default_rng(seed)
    for v in tuning.trainable(lm):
        v.assign(v + rng.normal(0, 0.3, v.shape).astype(np.float32))


def _ids(batch=2, time=SHAPE.n_ctx, seed=1):
    return tf.constant(np.random.default_rng(seed).integers(3, VOCAB.size, (batch, time)), tf.int32)


def _sampler_logits(net, ids, lengths, view=None):
    """Logits of the sampler's passes for positions lengths-1 … n_ctx-1 of each row: prefill right-padded
    prompts of ``lengths``, then one step per token, as ``Sampler`` does (over the first ``view`` cache slots
    while every position is below it). Returns [(positions, logits)]."""
    lengths = np.asarray(lengths, np.int32)
    T = int(lengths.max())
    prompt = np.where(np.arange(T)[None] < lengths[:, None], ids.numpy()[:, :T], 0)
    w = net.weights()
    logits, cache = net.prefill(w, tf.constant(prompt), tf.constant(lengths))
    out = [(lengths - 1, logits.numpy())]
    for s in range(net.n_ctx - T):
        positions = lengths + s
        tokens = tf.gather(ids, positions, batch_dims=1)
        short = {"view": view} if view and positions.max() < view else {}
        logits, cache = net.step(w, tokens, tf.constant(positions), cache, **short)
        out.append((positions, logits.numpy()))
    return out


@pytest.mark.parametrize("base_vocab", [None, BASE_VOCAB], ids=["same-vocab", "new-rows"])
@pytest.mark.parametrize("method", ["full", "bitfit", "adapter", "lora"])
def test_fresh_tuning_is_exactly_the_base_model(method, base_vocab):
    lm = _base()
    ids = _ids(time=12)
    ref = gpt2_logits(lm, ids, compute_dtype=tf.float32).numpy()
    tuning = _tuning(lm, method, base_vocab)
    np.testing.assert_array_equal(gpt2_logits(lm, ids, compute_dtype=tf.float32, tuning=tuning).numpy(), ref)
    plain, tuned = CachedGPT2(lm), CachedGPT2(lm, tuning=tuning)
    lengths = tf.constant([12, 7])
    np.testing.assert_array_equal(tuned.prefill(tuned.weights(), ids, lengths)[0].numpy(),
                                  plain.prefill(plain.weights(), ids, lengths)[0].numpy())


def test_fresh_prefix_holds_the_base_models_own_keys_and_values():
    """Prefix is the one method a fresh state cannot make exact (its slots always share the softmax): it
    starts from the base's keys/values of real tokens, so a query sees them like ordinary earlier context."""
    lm = _base()
    tuning = _tuning(lm, "prefix", None)
    net = CachedGPT2(lm)
    key = tuning.variables["h.1.prefix.key"].numpy()
    assert key.shape == (3, 32) and np.abs(key).max() > 0.1
    _, cache = net.prefill(net.weights(), tf.constant(np.zeros((1, 3)), tf.int32), tf.constant([3]))
    K = cache[1][0].numpy()[0, :, :3]  # [H, P, Dh] of some other tokens: same scale, different values
    assert 0.2 < np.std(key) / np.std(K) < 5


@pytest.mark.parametrize("batch, view", [(1, None), (2, None), (2, 8)], ids=["batch1-split", "batch2", "batch2-view8"])
@pytest.mark.parametrize("method", TUNE_METHODS)
def test_training_forward_and_sampler_compute_the_same_tuned_model(method, batch, view):
    """After non-zero tuned values, the sampler's prefill + steps up to the last context slot (n_ctx real
    tokens, whatever the prefix) give the training forward's logits; also with steps over a short cache view."""
    lm = _base()
    tuning = _tuning(lm, method)
    _perturb(lm, tuning)
    ids = _ids(batch=batch)
    ref = gpt2_logits(lm, ids, compute_dtype=tf.float32, tuning=tuning).numpy()
    assert np.abs(ref - gpt2_logits(_base(), ids, compute_dtype=tf.float32).numpy()).max() > 0.05  # it matters
    for positions, logits in _sampler_logits(CachedGPT2(lm, tuning=tuning), ids, [5, 3][:batch], view):
        np.testing.assert_allclose(logits, ref[np.arange(batch), positions], atol=ATOL, rtol=0)


@pytest.mark.parametrize("method", TUNE_METHODS)
def test_poem_attention_gives_each_poem_of_a_row_its_own_tuned_logits(method):
    """Training with ``attention poem`` (``boundary_id``): every poem of a packed row, prefix slots included, is
    computed as the tuned model computes it alone."""
    lm = _base()
    tuning = _tuning(lm, method)
    _perturb(lm, tuning)
    row = [int(t) for t in _ids(batch=1)[0]]
    row[4] = row[11] = VOCAB.sep_id  # a poem's end, a whole poem, a poem's start
    logits = gpt2_logits(lm, tf.constant([row]), compute_dtype=tf.float32, tuning=tuning,
                         boundary_id=VOCAB.sep_id).numpy()[0]
    for a, b in ((0, 4), (4, 11), (11, 16)):
        alone = gpt2_logits(lm, tf.constant([row[a:b]]), compute_dtype=tf.float32, tuning=tuning).numpy()[0]
        np.testing.assert_allclose(logits[a:b], alone, atol=ATOL, rtol=0)


@pytest.mark.slow  # an XLA compile: 6–9 s on 2 busy cores
def test_compiled_sampler_reads_tuned_variables_at_call_time():
    """One compiled program serves: changing the tuned variables changes its output, without retracing."""
    lm = _base()
    tuning = _tuning(lm, "prefix")
    net = CachedGPT2(lm, tuning=tuning)
    ids, lengths = _ids(time=8), tf.constant([8, 6])
    traces = []

    @tf.function(jit_compile=True)
    def prefill(ids, lengths):
        traces.append(1)
        return net.prefill(net.weights(), ids, lengths)[0]

    before = prefill(ids, lengths).numpy()
    _perturb(lm, tuning)
    after = prefill(ids, lengths).numpy()
    assert len(traces) == 1 and np.abs(after - before).max() > 0.05
    np.testing.assert_allclose(after, net.prefill(net.weights(), ids, lengths)[0].numpy(), atol=ATOL)


@pytest.mark.parametrize("method,embedding_rank", [("bitfit", 3), ("bitfit", 0), ("lora", 3)])
def test_merged_model_is_the_tuned_model(method, embedding_rank):
    """merge() into a copy of the base: our forward of the plain merged model, and transformers' own, give the
    tuned model's logits (float32; transformers computes with other ops: its tolerance is test_fast_gpt2's)."""
    lm = _base()
    tuning = _tuning(lm, method, embedding_rank=embedding_rank)
    assert tuning.cfg.embedding_update_rank == embedding_rank
    _perturb(lm, tuning)
    ids = _ids(time=12)
    ref = gpt2_logits(lm, ids, compute_dtype=tf.float32, tuning=tuning).numpy()
    merged = _copy(_base())  # the untouched base, as an export would load it
    tuning.merge(merged)
    np.testing.assert_allclose(gpt2_logits(merged, ids, compute_dtype=tf.float32).numpy(), ref, atol=ATOL, rtol=0)
    np.testing.assert_allclose(merged(input_ids=ids).logits.numpy(), ref, atol=2e-4, rtol=1e-4)
    base_rows = model_variables(_base())["wte"].numpy()[:BASE_VOCAB]
    if embedding_rank:  # LoRA on wte (SIZES targets it), bitfit's embedding update: the rows move by the product
        A, B = (tuning.variables[f"lora.wte.{n}"].numpy() for n in "AB")
        base_rows = base_rows + tuning.cfg.lora_scale * (A @ B)[:BASE_VOCAB]
        np.testing.assert_allclose(model_variables(merged)["wte"].numpy()[:BASE_VOCAB], base_rows, atol=1e-6)
    else:
        np.testing.assert_array_equal(model_variables(merged)["wte"].numpy()[:BASE_VOCAB], base_rows)


@pytest.mark.parametrize("method", ["adapter", "prefix"])
def test_merge_refuses_what_plain_gpt2_cannot_express(method):
    lm = _base()
    with pytest.raises(OptionError, match=f"--tune {method}"):
        _tuning(lm, method).merge(lm)


@pytest.mark.parametrize("method", TUNE_METHODS)
def test_gradients_reach_only_trainable(method):
    lm = _base()
    tuning = _tuning(lm, method)
    _perturb(lm, tuning)  # fresh LoRA B = 0 would leave A without gradient
    ids = _ids(time=12)
    every = list(lm.trainable_variables) + list(tuning.variables.values())
    with tf.GradientTape() as tape:
        loss_sum, _ = lm_loss_terms(lm, ids, ids, compute_dtype=tf.float32, tuning=tuning)
    grads = tape.gradient(loss_sum, every)
    trained = {v.ref() for v in tuning.trainable(lm)}
    assert len(trained) == len(tuning.trainable(lm)) > 0
    for v, g in zip(every, grads):
        if v.ref() in trained:
            assert g is not None and float(tf.norm(tf.convert_to_tensor(g))) > 0, v.name
        else:
            assert g is None, v.name
    # + new rows, + the embedding update's A and B for every method but full
    expected = {"full": 28, "bitfit": 2 * 6 + 1 + 1 + 2, "adapter": 2 * 4 + 1 + 2, "prefix": 2 * 2 + 1 + 2,
                "lora": 2 * 8 + 2 + 1}
    assert len(trained) == expected[method]


@pytest.mark.parametrize("method", TUNE_METHODS)
def test_save_load_round_trip(method, tmp_path):
    lm = _base()
    tuning = _tuning(lm, method)
    _perturb(lm, tuning)
    ids = _ids(time=12)
    ref = gpt2_logits(lm, ids, compute_dtype=tf.float32, tuning=tuning).numpy()
    tuning.save(tmp_path / "tuning.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["tuning.npz"]
    fresh = _copy(_base())
    loaded = Tuning.load(tmp_path / "tuning.npz", fresh)
    assert loaded.cfg == tuning.cfg and loaded.base_vocab_size == BASE_VOCAB
    np.testing.assert_array_equal(gpt2_logits(fresh, ids, compute_dtype=tf.float32, tuning=loaded).numpy(), ref)


def test_load_refuses_another_models_file(tmp_path):
    lm = _base()
    _tuning(lm, "lora").save(tmp_path / "tuning.npz")
    other = build_model(ModelConfig(n_layer=2, n_embd=16, n_head=4, n_ctx=16), VOCAB, seed=1)
    with pytest.raises(RunDirError, match=r"tuning.npz: embedding_rows has shape \(10, 32\), the model needs \(10, 16\)"):
        Tuning.load(tmp_path / "tuning.npz", other)
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(RunDirError, match="bad.npz: not a readable tuning file"):
        Tuning.load(tmp_path / "bad.npz", lm)


@pytest.mark.parametrize("change, option", [
    (dict(method="qlora"), "--tune"), (dict(adapter_size=0), "--adapter-size"), (dict(prefix_length=0),
                                                                                  "--prefix-length"),
    (dict(lora_rank=0), "--lora-rank"), (dict(lora_alpha=0.0), "--lora-alpha"),
    (dict(lora_embedding_rank=0), "--lora-embedding-rank"), (dict(embedding_rank=-1), "--embedding-rank"),
    (dict(lora_targets=("c_attn", "lm_head")), "--lora-targets"), (dict(lora_targets=()), "--lora-targets")])
def test_bad_tune_options_name_the_option(change, option):
    with pytest.raises(OptionError, match=f"^{option}: "):
        TuneConfig(**change)


def test_lora_on_wte_has_its_own_rank_and_the_blocks_scale():
    """``wte``'s A/B are [vocab, r_e] and [r_e, width]; the blocks' keep ``lora_rank``; the embedding's update
    is ``alpha/lora_rank · A·B``."""
    lm = _base()
    tuning = _tuning(lm, "lora", base_vocab=None)
    v = tuning.variables
    assert v["lora.wte.A"].shape == (VOCAB.size, 3) and v["lora.wte.B"].shape == (3, SHAPE.n_embd)
    assert v["h.0.lora.c_fc.A"].shape == (SHAPE.n_embd, 2) and v["h.1.lora.c_attn.B"].shape == (2, 3 * SHAPE.n_embd)
    _perturb(lm, tuning)
    expected = lm.transformer.wte.embeddings.numpy() + 4.0 / 2 * v["lora.wte.A"].numpy() @ v["lora.wte.B"].numpy()
    np.testing.assert_allclose(tuning.embedding().numpy(), expected, rtol=1e-6, atol=1e-7)


def _saved_without(tuning, setting: str, folder):
    """Save ``tuning`` as the code before ``setting`` existed wrote it (its header without the field); the path."""
    import json

    tuning.save(folder / "tuning.npz")
    with np.load(folder / "tuning.npz") as f:
        arrays = {name: f[name] for name in f.files}
    head = json.loads(str(arrays["__header__"]))
    del head["tune"][setting]
    arrays["__header__"] = np.array(json.dumps(head))
    np.savez(folder / "old.npz", **arrays)
    return folder / "old.npz"


def test_a_tuning_file_recorded_before_the_embedding_rank_loads_with_the_rank(tmp_path):
    """A tuning file (and a run.json) written before ``lora_embedding_rank`` existed had wte at ``lora_rank``."""
    from poetry_gpt.config import RunConfig

    lm = _base()
    cfg = TuneConfig(method="lora", **{**SIZES, "lora_embedding_rank": 2})
    tuning = Tuning(lm, cfg, seed=3)
    _perturb(lm, tuning)
    loaded = Tuning.load(_saved_without(tuning, "lora_embedding_rank", tmp_path), _copy(lm))
    assert loaded.cfg.lora_embedding_rank == 2
    np.testing.assert_array_equal(loaded.variables["lora.wte.A"].numpy(), tuning.variables["lora.wte.A"].numpy())
    old_run = RunConfig.from_dict({"tune": {"method": "lora", "lora_rank": 6}})
    assert old_run.tune.lora_embedding_rank == 6
    assert RunConfig().tune.lora_embedding_rank == 12  # a new run's default


@pytest.mark.parametrize("method", ["bitfit", "adapter", "prefix"])
def test_an_embedding_update_file_recorded_before_the_setting_loads_without_it(method, tmp_path):
    """A tuning file (and a run.json) of bitfit/adapter/prefix written before ``embedding_rank`` existed trained
    no embedding update: it loads with rank 0 and no update; a new run's default is 12, and 0 turns it off."""
    from poetry_gpt.config import RunConfig

    lm = _base()
    tuning = _tuning(lm, method, base_vocab=None, embedding_rank=0)
    assert not tuning.changes_embedding and "lora.wte.A" not in tuning.variables
    _perturb(lm, tuning)
    loaded = Tuning.load(_saved_without(tuning, "embedding_rank", tmp_path), _copy(lm))
    assert loaded.cfg.embedding_update_rank == 0 and sorted(loaded.variables) == sorted(tuning.variables)
    assert RunConfig.from_dict({"tune": {"method": method}}).tune.embedding_update_rank == 0
    assert RunConfig().tune.embedding_rank == 12  # a new run's default
    fresh = _tuning(lm, method, embedding_rank=5)
    assert fresh.variables["lora.wte.A"].shape == (VOCAB.size, 5) and fresh.cfg.describe().endswith("wte rank 5)")


def test_base_vocab_larger_than_the_model_is_refused():
    with pytest.raises(RunDirError, match="base vocabulary has 120 tokens but the model only 100"):
        Tuning(_base(), TuneConfig(method="lora"), base_vocab_size=120)


@pytest.mark.parametrize("method", ["bitfit", "adapter"])
def test_tuned_bias_gradients_in_bf16_are_float32_sums(method):
    """Under bf16 the dense biases a tuning trains (the blocks' under bitfit, the adapters' own) get float32 sums
    (``fused_ops.bias_add``): nearly all gradient values carry more bits than bf16 holds."""
    lm = _base()
    tuning = _tuning(lm, method, embedding_rank=0)  # the biases' sums only (a perturbed update saturates logits)
    _perturb(lm, tuning)
    trainable = tuning.trainable(lm)
    ids = _ids(batch=4)
    with tf.GradientTape() as tape:
        loss_sum, _ = lm_loss_terms(lm, ids, ids, compute_dtype=tf.bfloat16, tuning=tuning)
    biases = [(v.name, g) for v, g in zip(trainable, tape.gradient(loss_sum, trainable))
              if "bias" in v.name and "ln_" not in v.name]
    assert len(biases) == {"bitfit": 4, "adapter": 2}[method] * SHAPE.n_layer, [n for n, _ in biases]
    for name, g in biases:
        g = tf.convert_to_tensor(g).numpy().ravel()
        assert np.mean(g != tf.cast(tf.cast(g, tf.bfloat16), tf.float32).numpy()) > 0.9, name
