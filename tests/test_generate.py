"""Generation: the compiled sampler, PoemGenerator, and the generate/chat commands.

A tiny random GPT-2 (2 layers, width 32) is exported once per module; where the exact
output matters the sampler runs on a fake network with fixed logits (keras-hub style).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import poetry_gpt  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from poetry_gpt.errors import OptionError, RunDirError
from poetry_gpt.data.vocab import CharVocab

POEMS = [
    "春晓 唐诗：【春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。】",
    "静夜思 唐诗：【床前明月光，疑是地上霜。举头望明月，低头思故乡。】",
    "登鹳雀楼 唐诗：【白日依山尽，黄河入海流。欲穷千里目，更上一层楼。】",
    "相思 唐诗：【红豆生南国，春来发几枝。愿君多采撷，此物最相思。】",
]


def _tiny_model(vocab, n_ctx=64, seed=0):
    import tensorflow as tf
    from transformers import GPT2Config, TFGPT2LMHeadModel

    tf.keras.utils.set_random_seed(seed)
    model = TFGPT2LMHeadModel(GPT2Config(vocab_size=vocab.size, n_positions=n_ctx, n_embd=32, n_layer=2, n_head=2,
                                         bos_token_id=2, eos_token_id=2, pad_token_id=0))
    model(tf.zeros([1, 2], tf.int32))
    return model


def _export(model, vocab, folder, genre="唐诗"):
    folder.mkdir(parents=True)
    model.save_pretrained(str(folder))
    vocab.save(folder)
    (folder / "poetry_gpt.json").write_text(json.dumps(
        {"genre": genre, "n_ctx": model.config.n_positions, "vocab_hash": vocab.hash}, ensure_ascii=False))
    return folder


@pytest.fixture(scope="module")
def vocab():
    return CharVocab.from_counts(CharVocab.count_chars(POEMS))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, vocab):
    """A RUN_DIR holding export/ of a tiny random model."""
    run = tmp_path_factory.mktemp("run")
    _export(_tiny_model(vocab), vocab, run / "export")
    return run


@pytest.fixture(scope="module")
def gen(run_dir):
    from poetry_gpt.generate.generator import PoemGenerator

    return PoemGenerator(run_dir)


# ----------------------------------------------------------------------------- the network
def test_cached_forward_matches_transformers(gen):
    import tensorflow as tf

    model, net = gen.model, gen.sampler.net
    ids = np.random.default_rng(0).integers(3, gen.vocab.size, size=(2, 20)).astype(np.int32)
    ref = model(tf.constant(ids)).logits.numpy()
    w = net.weights()
    logits, cache = net.prefill(w, tf.constant(ids[:, :16]), tf.constant([16, 11]))
    np.testing.assert_allclose(logits.numpy(), ref[[0, 1], [15, 10]], atol=1e-4)
    # row 1 continues from its own length (11) while row 0 continues at 16
    logits, cache = net.step(w, tf.constant([ids[0, 16], ids[1, 11]]), tf.constant([16, 11]), cache)
    np.testing.assert_allclose(logits.numpy(), ref[[0, 1], [16, 11]], atol=1e-4)


@pytest.mark.parametrize("vocab_size", [40, 41])  # 41: the logits cannot split into 2 or 4 blocks
def test_batch_1_split_matmuls_match_transformers(vocab_size):
    """Batch-1 decode steps run their matmuls as row-block dots (cached_gpt2.SPLIT); same logits."""
    import tensorflow as tf
    from transformers import GPT2Config, TFGPT2LMHeadModel

    from poetry_gpt.model.cached_gpt2 import SPLIT
    from poetry_gpt.model.cached_gpt2 import CachedGPT2

    assert SPLIT > 1
    tf.keras.utils.set_random_seed(1)
    model = TFGPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=2))
    ids = np.random.default_rng(1).integers(0, vocab_size, size=(1, 12)).astype(np.int32)
    ref = model(tf.constant(ids)).logits.numpy()[0]
    for split in (1, 2, 4):
        net = CachedGPT2(model, split=split)
        w = net.weights()
        logits, cache = net.prefill(w, tf.constant(ids[:, :8]), tf.constant([8]))
        got = [logits.numpy()[0]]
        for t in range(8, 12):
            logits, cache = net.step(w, tf.constant(ids[:, t]), tf.constant([t]), cache)
            got.append(logits.numpy()[0])
        np.testing.assert_allclose(np.stack(got), ref[7:12], atol=1e-4, err_msg=f"split {split}")


def test_greedy_equals_argmax_loop_without_cache(gen):
    """top_k=1 through the compiled loop = argmax of the full forward, one character at a time."""
    import tensorflow as tf

    prompt = "春晓 唐诗：【春眠"
    ids = [2] + gen.vocab.encode(prompt)
    expected = []
    for _ in range(12):
        logits = gen.model(tf.constant([ids + expected])).logits.numpy()[0, -1]
        logits[:3] = -np.inf  # [PAD] [UNK] [SEP] are never sampled
        expected.append(int(np.argmax(logits)))
        if expected[-1] == gen.close_id:
            break
    [sample] = gen.generate(prompt, top_k=1, max_new_tokens=12, seed=0)
    assert sample.text == prompt + gen.vocab.decode(expected)


def test_a_step_over_a_short_cache_view_equals_the_whole_cache(gen):
    """``step(view=S)`` attends over the first S slots only: the same logits and cache as the full step."""
    import tensorflow as tf

    net = gen.sampler.net
    rows = np.random.default_rng(2).integers(3, gen.vocab.size, size=(3, 30)).astype(np.int32)
    w = net.weights()
    _, cache = net.prefill(w, tf.constant(rows[:, :16]), tf.constant([16, 12, 5]))
    tokens, positions = tf.constant(rows[:, 20]), tf.constant([16, 12, 5])
    full, full_cache = net.step(w, tokens, positions, cache)
    short, short_cache = net.step(w, tokens, positions, cache, view=32)
    np.testing.assert_allclose(short.numpy(), full.numpy(), rtol=0, atol=1e-5)
    for (K, V), (K2, V2) in zip(full_cache, short_cache):
        np.testing.assert_array_equal(K.numpy(), K2.numpy())
        np.testing.assert_array_equal(V.numpy(), V2.numpy())


def test_decode_views_are_32_slots_then_the_whole_cache_from_batch_16():
    from poetry_gpt.generate.sampler import decode_views

    assert decode_views(16, 128) == (32, 128) and decode_views(32, 512) == (32, 512)
    assert decode_views(32, 32) == (32,) and decode_views(64, 20) == (20,)
    assert decode_views(15, 128) == (128,) and decode_views(1, 1024) == (1024,)


def test_batched_poems_are_the_same_with_and_without_cache_views(gen, monkeypatch):
    """Rows of a batch of 16 whose poems run past slot 32 (the first view) into the whole 64-slot cache."""
    import poetry_gpt.generate.sampler as sampler_module

    prompts = [[2] + gen.vocab.encode(t) for t in ("春晓 唐诗：【春眠", "静夜思 唐诗：【床前明月光，疑是地上霜。")] * 8
    seeds = list(range(16))
    options = dict(max_new_tokens=40, top_k=10, temperature=1.5)  # random weights: rarely 】 before the budget
    viewed = gen.sampler.run(prompts, seeds, **options)
    monkeypatch.setattr(sampler_module, "VIEW_MIN_BATCH", 10 ** 9)
    whole = sampler_module.Sampler(gen.sampler.net, gen.close_id, banned_ids=[0, 1, 2]).run(prompts, seeds, **options)
    assert viewed.steps == whole.steps > 32 - len(prompts[0])  # a row still writing went past slot 32
    np.testing.assert_array_equal(viewed.tokens, whole.tokens)


def _tensor_passing(sampler):
    """``sampler`` with its cache passed between its programs as tensors (``run`` without cache variables)."""
    sampler.cache_slots = lambda batch: None
    return sampler


@pytest.mark.parametrize("batch", [2, 16])
def test_in_place_runs_give_the_poems_of_the_tensor_passing_programs(gen, batch):
    """``run`` keeps the cache in its batch size's variables: the same tokens as the programs that pass it as
    tensors, in one piece, in streamed segments, and after a run of other prompts left its keys there."""
    from poetry_gpt.generate.sampler import Sampler

    prompts = [[2] + gen.vocab.encode(t) for t in ("春晓 唐诗：【春眠", "静夜思 唐诗：【床前明月光，疑是地上霜。")]
    prompts, seeds = prompts * (batch // 2), list(range(batch))
    other = [[2] + gen.vocab.encode("登高 唐诗：【风急天高猿啸哀，渚清沙白鸟飞回。无边落木")] * batch
    options = dict(max_new_tokens=40, top_k=10, temperature=1.5)  # random weights: rarely 】 before the budget
    reference = _tensor_passing(Sampler(gen.sampler.net, gen.close_id, banned_ids=[0, 1, 2])).run(prompts, seeds,
                                                                                                   **options)
    in_place = Sampler(gen.sampler.net, gen.close_id, banned_ids=[0, 1, 2])
    first = in_place.run(prompts, seeds, **options)
    in_place.run(other, seeds[::-1], **options)
    streamed = []
    again = in_place.run(prompts, seeds, on_tokens=streamed.append, **options)
    assert in_place.cache_slots(batch) is not None and len(streamed) > 2 and reference.steps > 16
    for got in (first, again):
        assert got.steps == reference.steps
        np.testing.assert_array_equal(got.tokens, reference.tokens)
    np.testing.assert_array_equal(streamed[-1], reference.tokens)


def test_a_smaller_batch_runs_in_the_first_rows_of_a_larger_batchs_variables(gen):
    """Batch 16 first, then 2, then 16 again: one set of cache variables, and every run gives the poems of the
    tensor-passing programs."""
    from poetry_gpt.generate.sampler import Sampler

    rows = [[2] + gen.vocab.encode(t) for t in ("春晓 唐诗：【春眠", "静夜思 唐诗：【床前明月光，疑是地上霜。")]
    runs = [(rows * 8, list(range(16))), (rows[::-1], [7, 8]), (rows * 8, list(range(16)))]
    options = dict(max_new_tokens=40, top_k=10, temperature=1.5)
    sampler = Sampler(gen.sampler.net, gen.close_id, banned_ids=[0, 1, 2])
    got = [sampler.run(p, s, **options) for p, s in runs]
    reference = _tensor_passing(Sampler(gen.sampler.net, gen.close_id, banned_ids=[0, 1, 2]))
    assert sampler.cache_slots(2) is sampler.cache_slots(16) and sampler.cache_slots(16)[0][0].shape[0] == 16
    for (p, s), result in zip(runs, got):
        np.testing.assert_array_equal(result.tokens, reference.run(p, s, **options).tokens)


def test_a_run_leaves_the_final_cache_in_its_variables(gen):
    """The decode program writes the cache into the batch size's variables: after ``run`` they hold exactly the
    cache that the tensor-passing ``prefill`` + ``decode`` return for the same rows."""
    import tensorflow as tf

    from poetry_gpt.generate.sampler import Sampler, row_seeds, top_k_cap

    sampler = Sampler(gen.sampler.net, gen.close_id, banned_ids=[0, 1, 2])
    prompts = [[2] + gen.vocab.encode("春晓 唐诗：【春眠"), [2] + gen.vocab.encode("静夜思 唐诗：【床前")]
    result = sampler.run(prompts, [3, 4], max_new_tokens=20, top_k=10, temperature=1.5)
    ids = np.zeros([2, 16], np.int32)
    for r, p in enumerate(prompts):
        ids[r, :len(p)] = p
    lengths = tf.constant([len(p) for p in prompts], tf.int32)
    logits, cache, seen = sampler.prefill(tf.constant(ids), lengths)
    out, steps, carry = sampler.decode(logits, cache, seen, lengths, row_seeds([3, 4]), tf.constant([False, False]),
                                       sampler.options(10, 1.0, 0.0, 1.5, 1.0, 20), top_k_cap(10, gen.vocab.size))
    assert int(steps) == result.steps
    np.testing.assert_array_equal(out.numpy()[:, :result.steps], result.tokens)
    for (K, V), (k_slot, v_slot) in zip(carry[1], sampler.cache_slots(2)):
        assert np.abs(K.numpy()).max() > 0
        np.testing.assert_array_equal(k_slot.numpy(), K.numpy())
        np.testing.assert_array_equal(v_slot.numpy(), V.numpy())
    # a model in training samples with plain graphs, inside its strategy's scope: no variables made there
    assert Sampler(gen.sampler.net, gen.close_id, jit_compile=False).cache_slots(2) is None


def test_runs_from_two_threads_take_turns_with_the_cache_variables(gen):
    """Two threads running the same batch size at once each get the poems they get alone."""
    from concurrent.futures import ThreadPoolExecutor

    from poetry_gpt.generate.sampler import Sampler

    sampler = Sampler(gen.sampler.net, gen.close_id, banned_ids=[0, 1, 2])
    jobs = [([[2] + gen.vocab.encode(t)] * 2, [k, k + 1])
            for k, t in enumerate(("春晓 唐诗：【春眠", "登高 唐诗：【风急天高猿啸哀，渚清沙白鸟飞回。"))]
    options = dict(max_new_tokens=30, top_k=10, temperature=1.5)
    alone = [sampler.run(p, s, **options).tokens for p, s in jobs]
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(sampler.run, p, s, **options) for p, s in jobs * 4]
    for k, future in enumerate(futures):
        np.testing.assert_array_equal(future.result().tokens, alone[k % 2])


# ----------------------------------------------------------------------------- the loop, exactly
class FakeNet:
    """Logits fixed by position: position p prefers token ``script[p]``; nothing else matters.

    Args:
        script: position -> preferred token (logit 10, the others 0).
        row: logits added at every position (shape [vocab_size]).
    """

    def __init__(self, script, row=None, vocab_size=12, n_ctx=32):
        import tensorflow as tf

        self.n_ctx, self.vocab_size = n_ctx, vocab_size
        table = np.zeros([n_ctx, vocab_size], np.float32) + (0 if row is None else np.asarray(row, np.float32))
        for p, tok in script.items():
            table[p, tok] = 10.0
        self.table = tf.constant(table)

    def weights(self):
        return {}

    def prefill(self, w, ids, lengths):
        import tensorflow as tf

        return tf.gather(self.table, lengths), ()  # logits for position `length`

    def step(self, w, tokens, positions, cache):
        import tensorflow as tf

        return tf.gather(self.table, positions + 1), cache


class ShortSightedNet(FakeNet):
    """A ``FakeNet`` whose steps see only the slots of their view: at a position outside it the row prefers
    token 3 instead of its script (a loop that stepped a writing row past its view would show it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.views = []

    def step(self, w, tokens, positions, cache, view=None):
        import tensorflow as tf

        self.views.append(view)
        logits, cache = super().step(w, tokens, positions, cache)
        if view is None:
            return logits, cache
        blind = tf.one_hot(tf.fill(tf.shape(tokens), 3), self.vocab_size) * 10.0
        return tf.where((positions < view)[:, None], logits, blind), cache


def test_the_loop_moves_to_the_whole_cache_when_a_writing_row_reaches_the_first_view():
    """Rows of a batch of 16 (views 32, then all 128 slots) start at 5..31 and write to position 70: the first
    view's loop must hand over before any writing row steps outside it, and every row follows the script."""
    from poetry_gpt.generate.sampler import Sampler

    close, n_ctx = 11, 128
    script = {p: 4 + p % 6 for p in range(n_ctx)}  # tokens 4..9, never 3 nor the stop token
    script[70] = close
    net = ShortSightedNet(script, n_ctx=n_ctx)
    sampler = Sampler(net, stop_id=close, banned_ids=[0, 1, 2], jit_compile=False)
    lengths = [5, 10, 15, 20, 25, 28, 30, 31] * 2
    result = sampler.run([[2] * n for n in lengths], seeds=list(range(16)), max_new_tokens=80, top_k=1)
    assert sorted(set(net.views), key=str) == [32, None]  # the first view, then the whole cache
    assert result.steps == 70 - 5 + 1
    for row, n in enumerate(lengths):
        expected = [script[p] for p in range(n, 71)]
        assert result.tokens[row][:len(expected)].tolist() == expected, f"row {row}"


def test_loop_stops_at_stop_token_and_exits_early():
    from poetry_gpt.generate.sampler import Sampler

    close = 11
    sampler = Sampler(FakeNet({3: 5, 4: 6, 5: 7, 6: close, 7: 8}), stop_id=close, banned_ids=[0, 1, 2])
    result = sampler.run([[2, 4, 4], [2, 4, 4, 5, 6]], seeds=[0, 1], max_new_tokens=20, top_k=1)
    assert result.steps == 4  # left the loop when both rows were done, not after 20 steps
    assert result.tokens[0].tolist() == [5, 6, 7, close]
    assert result.tokens[1].tolist() == [7, close, 0, 0]  # started two positions later; [PAD] after 】


def test_loop_unclosed_runs_the_budget_and_never_samples_specials():
    from poetry_gpt.generate.sampler import Sampler

    sampler = Sampler(FakeNet({p: 2 for p in range(32)}), stop_id=11, banned_ids=[0, 1, 2])  # prefers [SEP]
    result = sampler.run([[2, 3]], seeds=[0], max_new_tokens=6, top_k=5)
    assert result.steps == 6 and result.tokens.shape == (1, 6)
    assert (result.tokens >= 3).all()


def test_repetition_penalty_skips_unpenalised_ids():
    from poetry_gpt.generate.sampler import Sampler

    row = np.zeros(12)
    row[5], row[6] = 10.0, 5.0
    plain = Sampler(FakeNet({}, row), stop_id=11, banned_ids=[0, 1, 2])
    exempt = Sampler(FakeNet({}, row), stop_id=11, banned_ids=[0, 1, 2], unpenalised_ids=[5])
    args = dict(seeds=[0], max_new_tokens=4, top_k=1, repetition_penalty=4.0)
    assert plain.run([[2, 3]], **args).tokens[0].tolist() == [5, 6, 5, 5]  # 10/4 < 5, then 10/4 > 5/4
    assert plain.run([[2, 5]], **args).tokens[0].tolist() == [6, 5, 5, 5]  # the prompt counts too
    assert exempt.run([[2, 3]], **args).tokens[0].tolist() == [5, 5, 5, 5]


def test_top_p_and_temperature_limit_the_candidates():
    from poetry_gpt.generate.sampler import Sampler

    row = np.zeros(12)
    row[3:6] = [3.0, 2.0, 1.0]  # probabilities about 0.67, 0.24, 0.09 among the top 3
    sampler = Sampler(FakeNet({}, row), stop_id=11, banned_ids=[0, 1, 2])
    seeds = list(range(40))
    nucleus = sampler.run([[2, 3]] * 40, seeds, max_new_tokens=3, top_k=3, top_p=0.8).tokens
    assert set(nucleus.ravel()) == {3, 4}  # 0.67 < 0.8: the second one is kept, the third never
    cold = sampler.run([[2, 3]] * 40, seeds, max_new_tokens=3, top_k=3, temperature=0.05).tokens
    assert set(cold.ravel()) == {3}
    hot = sampler.run([[2, 3]] * 40, seeds, max_new_tokens=3, top_k=3).tokens
    assert set(hot.ravel()) == {3, 4, 5}
    # min-p 0.3: 0.24 ≥ 0.3 × 0.67 stays, 0.09 does not; min-p 0.5 leaves the best alone
    assert set(sampler.run([[2, 3]] * 40, seeds, max_new_tokens=3, top_k=3, min_p=0.3).tokens.ravel()) == {3, 4}
    assert set(sampler.run([[2, 3]] * 40, seeds, max_new_tokens=3, top_k=3, min_p=0.5).tokens.ravel()) == {3}


@pytest.mark.parametrize("min_p, temperature, support", [
    (0.0, 1.0, range(3, 11)), (0.3, 1.0, range(3, 6)), (0.3, 2.0, range(3, 8))])
def test_whole_vocabulary_draw_needs_no_sort_and_keeps_the_distribution(min_p, temperature, support):
    """top-k ≥ the vocabulary (top-p off) takes the sort-free path; top-k 11 of 12 the sorted one: both
    draw from the same distribution (the softmax over the min-p survivors), within 4 standard errors."""
    from poetry_gpt.generate.sampler import Sampler

    row = np.full(12, -5.0)
    row[3:11] = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0]
    sampler = Sampler(FakeNet({}, row), stop_id=None, banned_ids=[0, 1, 2, 11])
    n = 4000
    expected = np.zeros(12)
    expected[list(support)] = np.exp(row[list(support)] / temperature)
    expected /= expected.sum()
    for top_k in (12, 11):  # sort-free, then sorted (8 allowed tokens: top-11 truncates nothing)
        drawn = sampler.run([[2, 3]] * n, list(range(n)), max_new_tokens=1, top_k=top_k, min_p=min_p,
                            temperature=temperature).tokens[:, 0]
        assert set(drawn.tolist()) == set(support)
        freq = np.bincount(drawn, minlength=12) / n
        assert (np.abs(freq - expected) <= 4 * np.sqrt(expected * (1 - expected) / n) + 1e-9).all(), (top_k, freq)


def _one_header(text: str) -> bool:
    """No 】 before the first 【, no second 【 after it (issue 12 #6)."""
    head, _, body = text.partition("【")
    return "】" not in head and "【" not in body


class _Tokens:
    """A vocabulary stand-in: just its tokens."""

    def __init__(self, tokens):
        self.tokens = tokens


@pytest.mark.slow
@pytest.mark.parametrize("top_k", [12, 5])  # the sort-free and the sorted draw
def test_compiled_sampler_writes_one_header_whatever_the_logits(top_k):
    """Random logits that favour 【 and 】 at every position: the free constraint inside the compiled loop
    keeps 】 out of the header and a second 【 (or [SEP]) out of the body, from either starting state."""
    import tensorflow as tf

    from poetry_gpt.generate import constraints
    from poetry_gpt.generate.sampler import Sampler

    tokens = ["[PAD]", "[UNK]", "[SEP]", "【", "】", *"春花秋月山水风"]
    net = FakeNet({})
    table = np.random.default_rng(0).normal(0.0, 2.0, size=(net.n_ctx, net.vocab_size))
    table[:, [2, 3, 4]] += 4.0
    net.table = tf.constant(table.astype(np.float32))
    free = constraints.free_constraint(_Tokens(tokens))
    sampler = Sampler(net, stop_id=4, banned_ids=[0, 1, 2])
    prompts = [[2], [2, 5, 3, 6]] * 8  # from nothing (header), and inside a body
    starts = [free.initial_state("".join(tokens[t] for t in p[1:])) for p in prompts]
    state = (tf.constant([s for s, _ in starts]), tf.constant([g for _, g in starts]), free.as_tensors())
    result = sampler.run(prompts, list(range(16)), max_new_tokens=20, top_k=top_k, constraint=constraints,
                         constraint_state=state)
    texts = []
    for prompt, row in zip(prompts, result.tokens.tolist()):
        written = row[:row.index(4) + 1] if 4 in row else row
        assert min(written) >= 3, written
        texts.append("".join(tokens[t] for t in prompt[1:] + written))
        assert _one_header(texts[-1]), texts[-1]
    assert sum(t.count("【") == 1 and t.endswith("】") for t in texts[0::2]) >= 4  # the rule was exercised


@pytest.fixture
def brackets_first(gen):
    """``gen`` with its model rigged (in place, restored after) so that every position's logits are random
    (std 1) except 【 and 】, which get logit 3: the favourites at every step, in the header and the body."""
    tr = gen.model.transformer
    saved = [(v, v.numpy()) for v in (tr.ln_f.gamma, tr.ln_f.beta, tr.wte.embeddings)]
    rng = np.random.default_rng(3)
    u = rng.normal(size=tr.ln_f.beta.shape[0]).astype(np.float32)
    tr.ln_f.gamma.assign(np.zeros_like(u))
    tr.ln_f.beta.assign(u)  # every final hidden state is u, so the logits are wte @ u at every position
    wte = (rng.normal(size=tr.wte.embeddings.shape) / np.linalg.norm(u)).astype(np.float32)
    wte[[gen.vocab.id_of("【"), gen.vocab.id_of("】")]] = 3 * u / (u @ u)
    tr.wte.embeddings.assign(wte)
    yield gen
    for variable, value in saved:
        variable.assign(value)


@pytest.mark.slow
def test_free_samples_write_one_header_on_every_path(brackets_first):
    """The compiled sampler, the eager reference path and the per-epoch sampler of ``train`` all keep to
    one header, from nothing and after a title, with 【 and 】 the model's favourites everywhere."""
    from poetry_gpt.generate.epoch import sample_poems

    gen = brackets_first
    samples = gen.generate(None, num_samples=16, batch_size=2, seed=0)
    samples += gen.generate(None, title="春", num_samples=8, batch_size=2, seed=0)
    samples += gen.generate_eager(None, num_samples=8, max_new_tokens=40, seed=0)
    texts = [s.text for s in samples]
    texts += [line.removeprefix("[unclosed] ")
              for line in sample_poems(gen.model, gen.vocab, [""] * 6 + ["春"] * 2, "唐诗", gen.n_ctx)]
    assert [t for t in texts if not _one_header(t)] == []
    assert sum(t.count("【") == 1 and t.endswith("】") for t in texts) > len(texts) // 2  # the rule was exercised


def test_eager_path_draws_new_noise_each_step_and_repeats_with_its_seed(brackets_first):
    """transformers' TF sampling reuses its ``seed`` argument at every step: with logits that do not change,
    a body was one character repeated. The eager path now draws each step afresh, reproducibly per seed."""
    gen = brackets_first
    first = [s.text for s in gen.generate_eager("春", num_samples=4, max_new_tokens=30, seed=1)]
    assert [s.text for s in gen.generate_eager("春", num_samples=4, max_new_tokens=30, seed=1)] == first
    assert any(len(set(text.partition("【")[2].rstrip("】"))) >= 3 for text in first), first


def test_a_second_open_bracket_in_the_opening_is_refused(gen):
    for generate in (gen.generate, gen.generate_eager):
        with pytest.raises(OptionError, match="opening: the prompt '唐诗：【春【眠' has a second '【'"):
            generate("春【眠")


def test_sampled_rows_depend_on_own_seed_only(gen):
    alone = gen.generate("春眠", seed=11)[0].text
    batch = gen.generate("春眠", seed=10, num_samples=3, batch_size=3)
    assert batch[1].seed == 11 and batch[1].text == alone


# ----------------------------------------------------------------------------- PoemGenerator
def test_same_seed_same_poems_other_seed_different(gen):
    a = [s.text for s in gen.generate("春眠", num_samples=3, seed=1)]
    b = [s.text for s in gen.generate("春眠", num_samples=3, seed=1)]
    c = [s.text for s in gen.generate("春眠", num_samples=3, seed=2)]
    assert a == b
    assert a != c
    assert len(set(a)) == 3  # batch members differ from each other


def test_prompt_kinds(gen):
    assert gen.build_prompts("春眠不觉晓", title="春晓") == ["春晓 唐诗：【春眠不觉晓"]
    assert gen.build_prompts(["春晓 唐诗：【春眠"]) == ["春晓 唐诗：【春眠"]
    assert gen.build_prompts("春晓 唐诗:【春眠") == ["春晓 唐诗：【春眠"]
    assert gen.build_prompts(None, title="春晓") == ["春晓 唐诗：【"]
    assert gen.build_prompts([]) == [""]


def test_sample_fields_and_unclosed(gen):
    samples = gen.generate(["春眠", "床前"], title="春晓", num_samples=2, max_new_tokens=3, seed=5, batch_size=3)
    assert [s.seed for s in samples] == [5, 6, 7, 8]
    assert [s.prompt for s in samples] == ["春晓 唐诗：【春眠"] * 2 + ["春晓 唐诗：【床前"] * 2
    for s in samples:
        assert s.text.startswith(s.prompt) and s.tokens == len(s.text) - len(s.prompt) <= 3
        assert s.closed == s.text.endswith("】") and s.body == s.text.split("【")[1].rstrip("】")
    assert any(not s.closed for s in samples)


def test_cut_at_close(tmp_path, vocab):
    """A model rigged to say 】 at once: the poem is the opening, closed, one token."""
    from poetry_gpt.generate.generator import PoemGenerator

    model = _tiny_model(vocab)
    tr = model.transformer
    u = np.random.default_rng(1).normal(size=32).astype(np.float32)
    tr.ln_f.gamma.assign(np.zeros(32, np.float32))
    tr.ln_f.beta.assign(u)  # every final hidden state is u
    wte = tr.wte.embeddings.numpy()
    wte[vocab.id_of("】")] = 20 * u / (u @ u)
    tr.wte.embeddings.assign(wte)
    g = PoemGenerator(_export(model, vocab, tmp_path / "export"))
    [s] = g.generate("春眠", seed=0)
    assert (s.text, s.body, s.closed, s.tokens) == ("唐诗：【春眠】", "春眠", True, 1)


def test_no_recompile_for_new_openings_or_sampling_options(gen):
    gen.generate("春眠不觉晓", seed=1)  # compile for batch 1 and the first bucket (≤ 16 tokens)
    gen.generate("春眠不觉晓", seed=1, top_k=16)  # and the 16-candidate cap (top_k_cap: one program per cap)
    traces = dict(gen.sampler.traces)  # (the test's own warm-up: it passes alone as well as after others)
    gen.generate("红豆生南国", title="相思", seed=2, top_k=7, top_p=0.9, temperature=0.7,
                 repetition_penalty=1.3, max_new_tokens=20)
    gen.generate("白日", seed=3, top_k=1)
    gen.generate("白日依山尽", seed=4, top_k=40, min_p=0.2)
    assert gen.sampler.traces == traces
    gen.generate("床前明月光，疑是地上霜", title="静夜思", seed=4)  # 20 tokens: next bucket, decode loop reused
    assert gen.sampler.traces == {"prefill": traces["prefill"] + 1, "decode": traces["decode"]}


def test_free_and_every_form_share_one_decode_program(gen):
    gen.generate("春眠", seed=1, num_samples=2, batch_size=2)
    traces = dict(gen.sampler.traces)
    for form in ("五绝", "七绝"):  # (a 七律 does not fit this model's 64-token context)
        gen.generate("春眠", seed=1, num_samples=2, batch_size=2, form=form)
    gen.generate("春眠", seed=1, num_samples=2, batch_size=2, form="五律", acrostic="春", rhyme=True)
    assert gen.sampler.traces["decode"] == traces["decode"]


def test_batches_round_up_to_a_power_of_two():
    from poetry_gpt.generate.decoders import batch_rows

    assert [batch_rows(n, 8) for n in range(1, 11)] == [1, 2, 4, 4, 8, 8, 8, 8, 8, 8]
    assert batch_rows(5, 6) == 6 and batch_rows(3, 1) == 1


def test_a_larger_base_means_fewer_batch_sizes():
    from poetry_gpt.generate.decoders import batch_rows, batch_sizes

    assert [batch_rows(n, 32, base=8) for n in (1, 2, 8, 9, 31, 40)] == [1, 8, 8, 32, 32, 32]
    assert batch_sizes(32) == [1, 2, 4, 8, 16, 32] and batch_sizes(32, base=8) == [1, 8, 32]
    assert batch_sizes(6, base=8) == [1, 6] and batch_sizes(1, base=8) == [1]


def test_padded_rows_do_not_change_poems_or_count(gen):
    three = gen.generate("春眠", seed=5, num_samples=3, batch_size=8)  # run as a batch of 4
    traces = dict(gen.sampler.traces)
    four = gen.generate("春眠", seed=5, num_samples=4, batch_size=8)
    assert gen.sampler.traces == traces
    assert len(three) == 3 and [s.text for s in three] == [s.text for s in four[:3]]


def test_memory_is_released_after_a_compile_only(gen, monkeypatch):
    import poetry_gpt.generate.decoders as generate_module  # the compiled decoder releases it

    calls = []
    monkeypatch.setattr(generate_module, "release_freed_memory", lambda: calls.append(1))
    gen.generate("春眠", seed=1, num_samples=1, batch_size=1, top_k=100)  # top-k cap 64+ : a new program
    assert calls == [1]
    gen.generate("春眠", seed=2, num_samples=1, batch_size=1, top_k=90)
    assert calls == [1]


FAKE_TORCH = """import os, traceback
with open(os.environ["FAKE_TORCH_MARKER"], "a") as f:
    f.write("".join(traceback.format_stack()))
raise ImportError("fake torch: poetry_gpt must not import torch")
"""


@pytest.mark.slow
def test_cli_generate_does_not_import_an_installed_torch(run_dir, tmp_path):
    """With torch installed (a fake one that records being imported), `generate` never imports it.

    The control run (USE_TF=0 given explicitly, which the CLI leaves alone) shows that transformers
    would import this fake, so the check can fail.
    """
    import subprocess

    from helpers import cli, env_with_fake_packages

    site = tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text(FAKE_TORCH)
    (site / "torch-2.9.0.dist-info").mkdir()
    (site / "torch-2.9.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.9.0\n")
    marker = tmp_path / "torch-imported"
    env = env_with_fake_packages(site, FAKE_TORCH_MARKER=str(marker))
    env.pop("USE_TF", None)
    command = cli() + ["generate", "--run", str(run_dir), "春眠", "--seed", "1"]

    control = subprocess.run(command, env={**env, "USE_TF": "0"}, capture_output=True, text=True, timeout=300)
    assert control.returncode != 0 and marker.exists(), control.stderr  # transformers imported the fake torch
    marker.unlink()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("唐诗：【春眠")
    assert not marker.exists(), marker.read_text()


def test_constraint_tables_are_built_once_per_setting_and_bounded(gen):
    from poetry_gpt.generate.planning import TABLE_CACHE

    first = gen._constraint("五绝", "春", False)
    assert gen._constraint("五绝", "春", False) is first and gen._constraint(None, None, False)[0] is None
    chars = [t for t in gen.vocab.tokens[3:] if "\u4e00" <= t <= "\u9fff"][:TABLE_CACHE + 2]
    assert len(chars) == TABLE_CACHE + 2
    for ch in chars:
        [s] = gen.generate(None, title="相思", form="五绝", acrostic=ch, seed=1)
        assert s.body.startswith(ch)  # an evicted or fresh entry still holds its own acrostic
    assert len(gen.tables.cache) <= TABLE_CACHE


@pytest.mark.slow
@pytest.mark.parametrize("log_level, opening", [(None, "春眠"), ("2", "龙")])
def test_cli_stderr_has_no_tensorflow_start_up_chatter(run_dir, log_level, opening):
    """TensorFlow's absl/oneDNN lines at import, and its CUDA probe's cuInit error at the first device use
    (which a TF_CPP_MIN_LOG_LEVEL of 2 lets through), are hidden; our own summary or Error line is not."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if log_level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = log_level
    code = "import sys; from poetry_gpt.cli import main; sys.argv[0] = 'poetry-gpt'; main()"
    proc = subprocess.run([sys.executable, "-c", code, "generate", "--run", str(run_dir), opening, "--seed", "1"],
                          capture_output=True, text=True, timeout=300, env=env)
    for noise in ("absl::InitializeLog", "oneDNN custom operations", "cudart_stub", "cuInit", "E0000"):
        assert noise not in proc.stderr, proc.stderr
    if opening == "龙":  # not in the vocabulary: refused after the model loaded
        assert proc.returncode == 1 and proc.stderr.startswith("Error: opening:") and proc.stderr.count("\n") == 1
    else:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("唐诗：【春眠")
        assert "poem(s) in" in proc.stderr


def test_form_constraint(gen):
    from poetry_gpt.verse.forms import check

    samples = gen.generate("春眠", form="五绝", num_samples=3, seed=3)
    for s in samples:
        assert s.closed and check(s.body).form == "五绝", s.text
    samples = gen.generate(None, title="相思", form="五绝", acrostic="春花", num_samples=3, seed=4)
    for s in samples:
        clauses = s.body.replace("。", "，").split("，")
        assert check(s.body).form == "五绝" and clauses[0][0] == "春" and clauses[1][0] == "花", s.text


def test_a_form_that_just_fits_the_budget_closes(gen):
    # "春眠" leaves 22 body characters and 】 of a 五绝: 23 tokens are enough, 22 are not
    samples = gen.generate("春眠", form="五绝", max_new_tokens=23, num_samples=2, seed=5)
    assert all(s.closed and s.tokens == 23 for s in samples)
    with pytest.raises(OptionError, match="needs 23 more tokens"):
        gen.generate("春眠", form="五绝", max_new_tokens=22)


@pytest.mark.parametrize("kwargs, option", [
    ({"top_k": 0}, "--top-k"),
    ({"top_p": 1.5}, "--top-p"),
    ({"top_p": 0.0}, "--top-p"),
    ({"min_p": 1.0}, "--min-p"),
    ({"min_p": -0.1}, "--min-p"),
    ({"temperature": 0}, "--temperature"),
    ({"repetition_penalty": 0}, "--repetition-penalty"),
    ({"num_samples": 0}, "--num-samples"),
    ({"batch_size": -1}, "--batch-size"),
    ({"max_new_tokens": 0}, "--max-new-tokens"),
    ({"max_new_tokens": 500}, "--max-new-tokens"),
    ({"form": "六绝"}, "--form"),
    ({"form": "七律", "title": "春晓"}, "--form 七律: the poem needs 63 more tokens"),
    ({"form": "五律", "max_new_tokens": 30}, "--max-new-tokens: a 五律 needs 47"),
    ({"form": "七律", "title": "春晓", "max_new_tokens": 40}, "--form 七律: the poem needs 63"),  # not the limit's fault
    ({"acrostic": "春"}, "--acrostic"),
    ({"title": "X光"}, "--title"),
    ({"openings": "春眠Z"}, "opening"),
    ({"openings": "春" * 80}, "opening"),
    ({"openings": "春晓 唐诗：【春眠", "title": "春晓"}, "full prefix"),
])
def test_validation_errors(gen, kwargs, option):
    kwargs = {"openings": "春眠", **kwargs}
    with pytest.raises(OptionError, match=option) as err:
        gen.generate(kwargs.pop("openings"), **kwargs)
    assert "\n" not in str(err.value)


def test_load_model_errors(tmp_path, run_dir):
    from poetry_gpt.generate.generator import load_model

    assert load_model(run_dir).path == run_dir / "export"
    assert load_model(run_dir / "export").genre == "唐诗"
    with pytest.raises(RunDirError, match="no such folder"):
        load_model(tmp_path / "missing")
    with pytest.raises(RunDirError, match="no model export"):
        load_model(tmp_path)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text('{"model_type": "bert"}')
    (bert / "vocab.txt").write_text("[PAD]\n[UNK]\n[SEP]\n")
    with pytest.raises(RunDirError, match="not a GPT-2 export"):
        load_model(bert)


# ----------------------------------------------------------------------------- CLI
def _invoke(args, input=None):
    from click.testing import CliRunner

    from poetry_gpt.cli import main

    return CliRunner().invoke(main, args, input=input)


@pytest.fixture
def cli_gen(gen, run_dir, monkeypatch):
    """The commands reuse the module's generator (and its compiled programs) for ``--run run_dir``."""
    from poetry_gpt.commands import generate as cmd

    real = cmd._load
    monkeypatch.setattr(cmd, "_load",
                        lambda path, checkpoint=None: gen if path == str(run_dir) and checkpoint is None
                        else real(path, checkpoint))
    return gen


def test_cli_generate_text_and_jsonl(cli_gen, run_dir, tmp_path):
    result = _invoke(["generate", "--run", str(run_dir), "春眠", "--title", "春晓", "-n", "3", "--seed", "1"])
    assert result.exit_code == 0, result.output
    lines = [l for l in result.stdout.splitlines() if l]
    assert len(lines) == 3 and all("春晓 唐诗：【春眠" in l for l in lines)
    out = tmp_path / "poems.jsonl"
    result = _invoke(["generate", "--run", str(run_dir), "床前", "-n", "3", "--seed", "1", "--max-new-tokens", "4",
                      "--out", str(out), "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    records = [json.loads(l) for l in out.read_text(encoding="utf-8").splitlines()]
    assert [r["seed"] for r in records] == [1, 2, 3]
    assert records[0]["options"]["max_new_tokens"] == 4 and records[0]["options"]["genre"] == "唐诗"
    assert records[0]["options"]["top_k"] == 64 and records[0]["options"]["min_p"] == 0.05  # the defaults
    assert {"prompt", "text", "body", "closed", "tokens", "seconds"} <= set(records[0])
    unclosed = [r for r in records if not r["closed"]]
    assert all(f"[unclosed] {r['text']}" in result.stdout for r in unclosed)


def test_cli_out_is_never_replaced_without_overwrite_and_never_a_model_file(cli_gen, run_dir, tmp_path, monkeypatch):
    """Issue 12.3: --out overwrote an existing file, in place."""
    import poetry_gpt.fsutil as fsutil

    out = tmp_path / "poems.txt"
    out.write_text("my poems\n", encoding="utf-8")
    args = ["generate", "--run", str(run_dir), "床前", "-n", "2", "--seed", "1", "--max-new-tokens", "4", "--out", str(out)]
    result = _invoke(args)
    assert result.exit_code == 1 and result.output.startswith(f"Error: --out {out}: the file already exists"), result.output
    assert "--overwrite" in result.output and out.read_text(encoding="utf-8") == "my poems\n"
    # with --overwrite the file is replaced through a temporary file and a rename: a failed write leaves it whole
    monkeypatch.setattr(fsutil.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    result = _invoke(args + ["--overwrite"])
    assert result.exit_code == 1 and "No space left on device" in result.output, result.output
    assert out.read_text(encoding="utf-8") == "my poems\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poems.txt"]
    monkeypatch.undo()
    result = _invoke(args + ["--overwrite"])
    assert result.exit_code == 0, result.output
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poems.txt"]
    # the model's own files are inputs: never an --out, with --overwrite neither
    for inside in (run_dir / "export" / "config.json", run_dir / "export" / "new.txt"):
        before = sorted(p.name for p in (run_dir / "export").iterdir())
        result = _invoke(["generate", "--run", str(run_dir / "export"), "床前", "--out", str(inside), "--overwrite"])
        assert result.exit_code == 1 and "part of the model --run reads" in result.output, result.output
        result = _invoke(["generate", "--run", str(run_dir), "床前", "--out", str(inside), "--overwrite"])
        assert result.exit_code == 1 and "part of the model --run reads" in result.output, result.output
        assert sorted(p.name for p in (run_dir / "export").iterdir()) == before
    # a folder is not a file to write: click refuses it (usage error), the folder untouched
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep me")
    result = _invoke(["generate", "--run", str(run_dir), "床前", "--out", str(folder), "--overwrite"])
    assert result.exit_code == 2 and "is a directory" in result.output, result.output
    assert [p.name for p in folder.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize("args, option", [
    (["--top-k", "0"], "--top-k"), (["--top-p", "1.5"], "--top-p"), (["--temperature", "0"], "--temperature"),
    (["-n", "-2"], "--num-samples"), (["--form", "六绝"], "--form"), (["--max-new-tokens", "-1"], "--max-new-tokens"),
])
def test_cli_errors_are_one_line(cli_gen, run_dir, args, option):
    result = _invoke(["generate", "--run", str(run_dir), "春眠", *args])
    assert result.exit_code == 1
    assert result.output.strip().startswith(f"Error: {option}") and "\n" not in result.output.strip()


def test_cli_missing_run(tmp_path):
    result = _invoke(["generate", "--run", str(tmp_path / "nope"), "春眠"])
    assert result.exit_code == 1 and "no such folder" in result.output


def test_cli_eager_reference_path(cli_gen, run_dir):
    result = _invoke(["generate", "--run", str(run_dir), "春眠", "--eager", "--seed", "1", "--max-new-tokens", "5",
                      "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    assert "唐诗：【春眠" in record["text"] and record["eager"]
    assert record["options"]["min_p"] == 0.0  # eager has no min-p: off by default
    result = _invoke(["generate", "--run", str(run_dir), "春眠", "--eager", "--min-p", "0.1"])
    assert result.exit_code == 1 and "--eager" in result.output  # asked for explicitly: refused, not ignored


def test_chat(cli_gen, run_dir):
    script = "\n".join(["春眠", ":k 1", ":n 3", ":title 春晓", ":k 0", ":form 六绝", ":form 五绝", "床前",
                        ":form off", ":m 2", ":m 0.1", ":show", ":seed 4", ":bogus", ":help", ":quit", "never read"]) + "\n"
    result = _invoke(["chat", "--run", str(run_dir), "--seed", "1"], input=script)
    assert result.exit_code == 0, result.output
    out = result.output
    poems = [line.removeprefix("[unclosed] ") for line in out.splitlines()]
    assert any(p.startswith("唐诗：【春眠") for p in poems)
    assert sum(p.startswith("春晓 唐诗：【") for p in poems) == 3  # :n 3 took effect
    assert sum(p.startswith("唐诗：【床前") and p.endswith("】") for p in poems) == 3  # with :form 五绝
    assert "Error: --top-k" in out and "Error: --form" in out and "Unknown command :bogus" in out
    assert "Error: --min-p" in out and "min_p=0.1" in out  # a bad :m is refused, a good one shown by :show
    assert ":title T" in out and out.rstrip().endswith("Bye.")
    assert "never read" not in out


def test_chat_ends_on_eof(cli_gen, run_dir):
    result = _invoke(["chat", "--run", str(run_dir)], input="春眠\n")
    assert result.exit_code == 0 and result.output.rstrip().endswith("Bye.")


def test_generate_from_a_chosen_checkpoint(tmp_path):
    """--checkpoint loads the weights of that checkpoint (not the export); unknown ones list the available."""
    import random

    from click.testing import CliRunner

    from poetry_gpt.cli import main
    from poetry_gpt.config import DataConfig, config_from_preset
    from poetry_gpt.generate.generator import load_model
    from poetry_gpt.data.prepare import prepare
    from poetry_gpt.train.loop import train

    rng = random.Random(0)
    chars = "春夏秋冬风花雪月山水云烟江湖日夜"
    raw = tmp_path / "raw.txt"
    raw.write_text("".join(f"题{i} 唐诗：【{''.join(rng.choice(chars) for _ in range(5))}，"
                           f"{''.join(rng.choice(chars) for _ in range(5))}。】\n" for i in range(120)), encoding="utf-8")
    prepare([raw], tmp_path / "d", DataConfig(valid_fraction=0.1), n_ctx=64)
    cfg = config_from_preset("tiny").replace(train=dict(epochs=2, steps_per_epoch=3, samples_per_epoch=0,
                                                        precision="fp32", keep_checkpoints=5))
    train(tmp_path / "d", tmp_path / "r", cfg, echo=lambda s: None, verbose=0)
    first = load_model(tmp_path / "r", checkpoint="3")
    latest = load_model(tmp_path / "r", checkpoint="latest")
    export = load_model(tmp_path / "r")
    assert first.meta["global_step"] == 3 and latest.meta["global_step"] == 6
    w = lambda e: e.model.transformer.wte.embeddings.numpy()  # noqa: E731
    assert np.allclose(w(latest), w(export)) and not np.allclose(w(first), w(export))
    result = CliRunner().invoke(main, ["generate", "--run", str(tmp_path / "r"), "--checkpoint", "ckpt-4", "春"])
    assert result.exit_code == 1 and "available: latest, 3, 6" in result.output
    result = CliRunner().invoke(main, ["generate", "--run", str(tmp_path / "r"), "--checkpoint", "3", "--seed", "1", "春"])
    assert result.exit_code == 0, result.output
