"""The whole poet as one TensorFlow SavedModel: strings in, poems out, nothing but TensorFlow to run it.

``export_saved_model`` wraps a loaded ``PoemGenerator`` in a ``tf.Module`` whose ``generate`` function
(also the ``serving_default`` signature) does in the graph what ``PoemGenerator.generate`` does in
Python: it checks the options (``sampling.RULES``), builds each row's prompt from ``prompt`` and
``title`` (``corpus.prompt_prefix``, with the export's genre), maps characters to ids
(``tf.strings.unicode_split`` and a lookup table), picks the form's constraint tables (built at export
time by ``constraints.build_constraint``, the acrostic written into them in the graph), walks each prompt
through the form's automaton, then runs the sampler's own compiled programs (``Sampler.prefill`` and
``Sampler.decode``, traced into the SavedModel, one per exported batch size, prompt bucket and top-k
cap) and turns the ids back into text. A bad row (an unknown character, a prompt that cannot begin
the form, …) gets an ``error`` string and no poem; the other rows are written as usual.

A row's poem equals ``PoemGenerator``'s for the same prompt, options and seed when both run it at the
same batch size: the SavedModel pads a request to the smallest exported batch size that holds it
(larger requests run in chunks of the largest), ``PoemGenerator`` to the next power of two up to its
``batch_size``.
"""
from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import __version__
from ..data.corpus import prompt_prefix
from ..data.vocab import PAD_ID, SEP_ID
from ..errors import OptionError
from ..fsutil import atomic_write_json, fsync_dir, is_within, recover_aside, replace_dir
from ..generate import constraints
from ..generate.sampler import NEG, bucket_length, row_seeds, top_k_cap
from ..sampling import RULES, SamplingConfig
from ..verse import forms
from ..verse.forms import CLOSE

ASSET = "poetry_gpt.json"  # in OUT_DIR/assets/: source run, step, versions, the signature
DEFAULT_BATCH_SIZES = (1, 8)
MAX_BATCH_SIZE = 256
RANDOM_SEED = -1
_TITLE, _OPENING = "\x01", "\x02"  # slots of the prompt templates
_DEFAULTS = SamplingConfig()

#: inputs of ``generate`` / ``serving_default``: (name, dtype, shape, default, meaning)
INPUTS = (
    ("prompt", "string", [None], None, "one poem a row: a corpus-style prefix (春晓 唐诗：【春眠) or the first "
                                       "characters of the body (春眠不觉晓); \"\" with a title: the model writes "
                                       "the body; \"\" without: it writes everything"),
    ("title", "string", [], "", "title of the prompts that are not full prefixes"),
    ("form", "string", [], "", "五绝, 七绝, 五律 or 七律 (or 五言绝句 …, traditional spellings too); \"\" = free"),
    ("acrostic", "string", [], "", "characters that begin the clauses (needs form)"),
    ("rhyme", "bool", [], False, "make the rhyme clauses rhyme (needs form), in the 平水韵 平声 groups"),
    ("strict", "bool", [], False, "格律 (tone patterns, 平水韵 rhyme) is not in the SavedModel: a row asking for it "
                                  "gets an error; use `poetry-gpt generate --strict`"),
    ("seed", "int64", [], RANDOM_SEED, "seed of row 0, row i uses seed + i; -1 = random"),
    ("top_k", "int32", [], _DEFAULTS.top_k, "sample among the k most likely characters (1 = greedy)"),
    ("top_p", "float32", [], _DEFAULTS.top_p, "nucleus mass in (0, 1] (1 = off)"),
    ("min_p", "float32", [], _DEFAULTS.min_p, "drop characters below min_p × the most likely one's probability"),
    ("temperature", "float32", [], _DEFAULTS.temperature, "> 0"),
    ("repetition_penalty", "float32", [], _DEFAULTS.repetition_penalty, "> 0 (1 = off)"),
    ("max_new_tokens", "int32", [], 0, "characters to generate at most; 0 = all that fit the context"),
)
#: outputs, one value a row: (name, dtype, meaning)
OUTPUTS = (
    ("poem", "string", "the corpus-style line, prompt included, cut after the first 】 (\"\" on error)"),
    ("closed", "bool", "the poem reached its 】 within the budget"),
    ("tokens", "int32", "characters generated (】 included)"),
    ("seed", "int64", "the row's seed (repeat the poem with it and a batch of one)"),
    ("error", "string", "\"\" or why the row was not generated"),
)


def _fill_template(template: str, title, opening):
    """``template`` (``prompt_prefix`` with slot characters) with the title and opening tensors put in."""
    import tensorflow as tf

    parts = [{_TITLE: title, _OPENING: opening}.get(p, p) for p in re.split(f"([{_TITLE}{_OPENING}])", template) if p]
    return tf.strings.join(parts)


def _first_error(errors, bad, message):
    """Put ``message`` (scalar or per row) into the rows of ``errors`` that are ``bad`` and have none yet."""
    import tensorflow as tf

    return tf.where((errors == "") & bad, message, errors)


def _quoted(text):
    import tensorflow as tf

    return tf.strings.join(["'", text, "'"])


class SavedPoet:
    """Builds the ``tf.Module`` of one ``PoemGenerator`` (see the module docstring).

    Args:
        gen: a loaded ``PoemGenerator``.
        batch_sizes: the batch sizes to trace programs for.
    """

    def __init__(self, gen, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES):
        import tensorflow as tf

        self.gen, self.sampler, vocab = gen, gen.sampler, gen.vocab
        self.V, self.n_ctx = vocab.size, gen.n_ctx
        self.batch_sizes = sorted(set(batch_sizes))
        self.close_id = -1 if gen.close_id is None else gen.close_id
        module = tf.Module(name="poetry_gpt")
        module.model_weights = tf.nest.flatten(self.sampler.net._vars)
        if gen.export.tuning is not None:  # adapter/prefix (or a tuned checkpoint): its variables are saved too
            module.tuning_weights = list(gen.export.tuning.variables.values())
        chars = [(t, i) for i, t in enumerate(vocab.tokens) if i >= 3 and len(t) == 1]
        module.char_ids = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            [t for t, _ in chars], tf.constant([i for _, i in chars], tf.int32)), default_value=-1)
        spellings = constraints.form_spellings()
        names = list(forms.FORMS)
        module.form_ids = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            list(spellings), tf.constant([names.index(v) for v in spellings.values()], tf.int32)), default_value=-1)
        self._set_tables(module)
        self.module = module
        self.token_text = list(vocab.tokens)
        self.hanzi = np.array([i >= 3 and forms.is_hanzi(t) for i, t in enumerate(vocab.tokens)])
        genre = gen.genre
        self.templates = None if not genre else (prompt_prefix(_TITLE, genre, _OPENING),
                                                 prompt_prefix("", genre, _OPENING))
        buckets = sorted({bucket_length(n, self.n_ctx) for n in range(1, self.n_ctx + 1)})
        self.buckets = buckets
        self.bucket_index = [buckets.index(bucket_length(max(n, 1), self.n_ctx)) for n in range(self.n_ctx + 1)]
        caps = sorted({top_k_cap(k, self.V) for k in range(1, self.V + 1)})
        self.caps = caps
        self.cap_index = [caps.index(top_k_cap(max(k, 1), self.V)) for k in range(self.V + 1)]
        top = self.batch_sizes[-1]
        self.batch_index = [next(i for i, b in enumerate(self.batch_sizes) if b >= max(n, 1)) for n in range(top + 1)]
        module.generate = tf.function(self._signature_function(), input_signature=[
            tf.TensorSpec(shape, getattr(tf, dtype), name=name) for name, dtype, shape, _, _ in INPUTS])

    # tables --------------------------------------------------------------------------------
    def _set_tables(self, module) -> None:
        """Constraint tables of free sampling and every (form, rhyme) as stacked variables: set 0 is
        free, set ``1 + 2·form + rhyme`` a form (``forms.FORMS`` order); a vocabulary that cannot write
        the forms records ``build_constraint``'s message instead."""
        import tensorflow as tf

        sets, messages, names, starts = [constraints.free_constraint(self.gen.vocab)], [""], [""], [[0] * 8]
        for name, form in forms.FORMS.items():
            for rhyme in (False, True):
                try:
                    sets.append(constraints.build_constraint(name, self.gen.vocab, rhyme=rhyme))
                    messages.append("")
                except OptionError as exc:
                    sets.append(constraints.free_constraint(self.gen.vocab))
                    messages.append(str(exc).replace("--form", "form"))
                names.append(name)
                starts.append((constraints.clause_start_states(form) + [0] * 8)[:8])
        rows = max(len(c.allowed) for c in sets)  # the SavedModel holds no strict tables: no padding for them
        tables = [c.padded_tables(rows) for c in sets]
        stack = {k: np.stack([t[k] for t in tables]) for k in tables[0]}
        module.allowed = tf.Variable(stack["allowed"], trainable=False, name="allowed")
        module.next_state = tf.Variable(stack["next_state"].astype(np.int8), trainable=False, name="next_state")
        self.rhyme_role, self.token_final = stack["rhyme_role"], stack["token_final"]
        self.done_state = [c.done_state for c in sets]
        self.clauses = [0] + [f.clauses for f in forms.FORMS.values() for _ in (0, 1)]
        self.set_messages, self.set_names, self.clause_starts = messages, names, starts

    # the signature -----------------------------------------------------------------------------
    def _signature_function(self) -> Callable:
        """``generate`` with the documented keyword defaults (``tf.function`` reads ``__signature__``)."""
        def generate(*args, **kwargs):
            return self.generate(**inspect.signature(generate).bind(*args, **kwargs).arguments)

        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        generate.__signature__ = inspect.Signature(
            [inspect.Parameter(name, kind, **({} if default is None else {"default": default}))
             for name, _, _, default, _ in INPUTS])
        return generate

    def generate(self, prompt, title, form, acrostic, rhyme, strict, seed, top_k, top_p, min_p, temperature,
                 repetition_penalty, max_new_tokens) -> dict:
        """The graph of ``serving_default`` (arguments: ``INPUTS``; returns ``OUTPUTS``)."""
        import tensorflow as tf

        n = tf.size(prompt)
        errors = tf.fill([n], "")
        values = dict(top_k=top_k, top_p=top_p, min_p=min_p, temperature=temperature,
                      repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens)
        for rule in RULES:
            if rule.name in values:
                value = values[rule.name]
                ok = rule.test(value) | (max_new_tokens == 0 if rule.name == "max_new_tokens" else False)
                errors = _first_error(errors, tf.fill([n], ~ok),
                                      tf.strings.format(f"{rule.name}: {rule.expected}, got {{}}", value))
        errors = _first_error(errors, tf.fill([n], strict), "strict: the SavedModel has no 格律 (tone pattern) "
                              "tables; leave strict off or use `poetry-gpt generate --strict`")
        text, errors = self._prompts(prompt, title, errors)
        chars = tf.strings.unicode_split(text, "UTF-8")
        ids = self.module.char_ids.lookup(chars)
        errors = self._check_chars(text, title, chars, ids, errors)
        tables, set_index, errors = self._tables(form, acrostic, rhyme, errors)
        state, group, errors = self._walk(text, chars, ids, tables, set_index, errors)
        budget, errors = self._budget(ids.row_lengths(), state, set_index, max_new_tokens, errors)
        active = errors == ""
        base = tf.where(seed == RANDOM_SEED, tf.random.uniform([], 0, 2**31 - 1, tf.int64), seed)
        seeds = base + tf.range(tf.cast(n, tf.int64))
        options = self.sampler.options(top_k, top_p, min_p, temperature, repetition_penalty, budget)
        out = tf.cond(tf.reduce_any(active),
                      lambda: self._run(ids, active, seeds, state, group, tables, options, top_k),
                      lambda: tf.zeros([n, self.n_ctx], tf.int32))
        return self._poems(text, out, active, seeds, errors)

    # prompts ------------------------------------------------------------------------------------
    def _prompts(self, prompt, title, errors):
        """Each row's prompt text (as ``PoemGenerator.build_prompts``) and the rows it refuses."""
        import tensorflow as tf

        p = tf.strings.strip(prompt)
        full = tf.strings.regex_full_match(p, "(?s).*[：:]【.*")
        has_title = title != ""
        empty = (p == "") & ~has_title
        errors = _first_error(errors, full & has_title, tf.strings.join([
            "prompt: ", _quoted(p), " is a full prefix (title 体裁：【…); leave title empty or give only the "
            "first line"]))
        if self.templates is None:
            errors = _first_error(errors, ~full & ~empty, "prompt: this export records no genre; give a full "
                                                          "prefix (title 体裁：【…)")
            headed = p
        else:
            headed = tf.where(has_title, _fill_template(self.templates[0], title, p),
                              _fill_template(self.templates[1], title, p))
        text = tf.where(full, tf.strings.regex_replace(p, ":【", "：【", replace_global=False),
                        tf.where(empty, "", headed))
        errors = _first_error(errors, tf.strings.regex_full_match(text, f"(?s).*{CLOSE}.*"), tf.strings.join([
            "prompt: ", _quoted(text), " already has the closing 】; give only the start of the poem"]))
        return text, errors

    def _check_chars(self, text, title, chars, ids, errors):
        """Refuse characters outside the vocabulary (title first, as ``PoemGenerator``) and prompts that
        fill the context."""
        import tensorflow as tf

        advice = (f" not in the model's vocabulary ({self.V} tokens): ", "; replace them with common (simplified) "
                  "characters the corpus uses, or leave them out")
        title_chars = tf.strings.unicode_split(title, "UTF-8")
        missing = tf.boolean_mask(title_chars, self.module.char_ids.lookup(title_chars) < 0)
        errors = _first_error(errors, tf.fill(tf.shape(errors), tf.size(missing) > 0), tf.strings.join([
            "title: ", tf.strings.as_string(tf.size(missing)), " character(s)", advice[0],
            _quoted(tf.strings.reduce_join(missing)), advice[1]]))
        missing = tf.ragged.boolean_mask(chars, ids < 0)
        count = missing.row_lengths()
        errors = _first_error(errors, count > 0, tf.strings.join([
            "prompt: ", tf.strings.as_string(count), " character(s)", advice[0],
            _quoted(tf.strings.reduce_join(missing, axis=1)), advice[1]]))
        length = 1 + ids.row_lengths()
        return _first_error(errors, length >= self.n_ctx, tf.strings.join([
            "prompt: ", _quoted(text), " is ", tf.strings.as_string(length), f" tokens with [SEP], the model's "
            f"context is {self.n_ctx}, leaving no room to generate; shorten it"]))

    # forms --------------------------------------------------------------------------------------
    def _tables(self, form, acrostic, rhyme, errors):
        """The constraint tables for ``form`` (the acrostic written in), the set's index, and errors."""
        import tensorflow as tf

        every = tf.fill(tf.shape(errors), True)
        name = tf.strings.strip(form)
        free = name == ""
        form_id = self.module.form_ids.lookup(name)
        errors = _first_error(errors, every & ~free & (form_id < 0), tf.strings.join([
            "form: unknown form ", _quoted(name), f"; choose one of {', '.join(forms.FORMS)} (or "
            f"{', '.join(f.full_name for f in forms.FORMS.values())})"]))
        acrostic = tf.strings.regex_replace(acrostic, r"[\s\pZ]", "")
        needs = f": needs form ({', '.join(forms.FORMS)})"
        errors = _first_error(errors, every & free & (acrostic != ""), "acrostic" + needs)
        errors = _first_error(errors, every & free & rhyme, "rhyme" + needs)
        set_index = tf.where(free | (form_id < 0), 0, 1 + 2 * form_id + tf.cast(rhyme, tf.int32))
        errors = _first_error(errors, every, tf.gather(self.set_messages, set_index))
        chars = tf.strings.unicode_split(acrostic, "UTF-8")
        ids = self.module.char_ids.lookup(chars)
        clauses = tf.gather(self.clauses, set_index)
        count = tf.size(ids)
        form_name = tf.gather(self.set_names, set_index)
        errors = _first_error(errors, every & (count > clauses) & (set_index > 0), tf.strings.join([
            "acrostic: ", tf.strings.as_string(count), " characters but a ", form_name, " has ",
            tf.strings.as_string(clauses), " clauses; give at most ", tf.strings.as_string(clauses)]))
        oov, not_hanzi = ids < 0, ~tf.gather(self.hanzi, tf.maximum(ids, 0))
        for bad, what in ((oov, " is not in the vocabulary; choose another"), (not_hanzi, " is not a Chinese character")):
            errors = _first_error(errors, every & tf.reduce_any(bad), tf.strings.join([
                "acrostic: character ", _quoted(tf.strings.reduce_join(tf.boolean_mask(chars, bad)[:1])), what]))
        usable = tf.where(tf.reduce_any(oov | not_hanzi), 0, tf.minimum(count, clauses))
        rows = tf.gather(tf.gather(self.clause_starts, set_index), tf.range(usable))
        allowed = tf.tensor_scatter_nd_update(
            tf.gather(self.module.allowed, set_index), rows[:, None],
            tf.one_hot(ids[:usable], self.V, on_value=True, off_value=False))
        tables = {"allowed": allowed, "next_state": tf.cast(tf.gather(self.module.next_state, set_index), tf.int32),
                  "rhyme_role": tf.gather(self.rhyme_role, set_index),
                  "token_final": tf.gather(self.token_final, set_index)}
        return tables, set_index, errors

    def _walk(self, text, chars, ids, tables, set_index, errors):
        """Each row's ``(state, rhyme group)`` after its prompt (``DecodeConstraint.initial_state`` with the
        TF functions the decode loop uses); rows whose prompt cannot begin the form get an error."""
        import tensorflow as tf

        n = tf.size(text)
        dense = tf.maximum(ids.to_tensor(0), 0)
        lengths = tf.cast(ids.row_lengths(), tf.int32)

        def step(t, state, group, bad_at):
            token = dense[:, t]
            live = (t < lengths) & (bad_at < 0)
            mask = constraints.apply_constraint_tf(tf.zeros([n, self.V]), state, group, tables) > NEG / 2
            fits = tf.gather(mask, token, batch_dims=1)
            new_state, new_group = constraints.advance_tf(state, group, token, tables)
            go = live & fits
            return (t + 1, tf.where(go, new_state, state), tf.where(go[:, None], new_group, group),
                    tf.where(live & ~fits, t, bad_at))

        start = (tf.constant(0), tf.zeros([n], tf.int32), -tf.ones([n, constraints.RHYME_WIDTH], tf.int32),
                 -tf.ones([n], tf.int32))
        _, state, group, bad_at = tf.while_loop(lambda t, *_: t < tf.shape(dense)[1], step, start)
        char = _quoted(tf.gather(chars.to_tensor(""), tf.maximum(bad_at, 0), batch_dims=1))
        misfit = tf.where(set_index > 0, tf.strings.join([
            "prompt: ", _quoted(text), " cannot begin a ", tf.gather(self.set_names, set_index), ": ", char,
            " does not fit there"]), tf.strings.join([  # free sampling: only a second 【 cannot stand in a body
                "prompt: ", _quoted(text), " has a second ", char, " inside the poem; give one header"]))
        return state, group, _first_error(errors, bad_at >= 0, misfit)

    def _budget(self, lengths, state, set_index, max_new_tokens, errors):
        """Tokens each row may write: ``max_new_tokens``, or (0) all that fit after the longest prompt;
        rows the context or the budget cannot finish (a form's poem) get an error."""
        import tensorflow as tf

        room_row = self.n_ctx - 1 - tf.cast(lengths, tf.int32)
        given = max_new_tokens > 0
        errors = _first_error(errors, given & (max_new_tokens > room_row), tf.strings.join([
            "max_new_tokens: at most ", tf.strings.as_string(room_row), f" fit the {self.n_ctx}-token context "
            "after this prompt, got ", tf.strings.as_string(max_new_tokens)]))
        room = self.n_ctx - 1 - tf.reduce_max(tf.where(errors == "", tf.cast(lengths, tf.int32), 0))
        budget = tf.where(given, max_new_tokens, room)
        need = tf.where(set_index > 0, tf.gather(self.done_state, set_index) - state, 0)  # forms only
        form_name = tf.gather(self.set_names, set_index)
        too_long = tf.where(given, tf.strings.join([
            "max_new_tokens: a ", form_name, " needs ", tf.strings.as_string(need), " more tokens after the prompt, "
            "got ", tf.strings.as_string(max_new_tokens), "; raise it or leave it out"]), tf.strings.join([
                "form: the poem needs ", tf.strings.as_string(need), f" more tokens after the prompt but the model's "
                f"{self.n_ctx}-token context leaves ", tf.strings.as_string(room), "; shorten the title/opening or "
                "choose a shorter form"]))
        return budget, _first_error(errors, need > budget, too_long)

    # sampling -------------------------------------------------------------------------------------
    def _run(self, ids, active, seeds, state, group, tables, options, top_k):
        """The sampled ids ``[n, n_ctx]``: rows padded to an exported batch size, the sampler's programs."""
        import tensorflow as tf

        n = tf.size(active)
        sep = tf.RaggedTensor.from_tensor(tf.fill([n, 1], SEP_ID))
        prompts = tf.concat([sep, tf.maximum(ids, 0)], axis=1).to_tensor(0, shape=[None, self.n_ctx])
        sep_only = tf.one_hot(0, self.n_ctx, on_value=SEP_ID, off_value=0, dtype=tf.int32)
        rows = {"ids": tf.where(active[:, None], prompts, sep_only[None]),
                "lengths": tf.where(active, 1 + tf.cast(ids.row_lengths(), tf.int32), 1),
                "seeds": row_seeds(seeds), "done": ~active,
                "state": tf.where(active, state, 0), "group": tf.where(active[:, None], group, -1)}
        cap = tf.gather(self.cap_index, tf.clip_by_value(top_k, 0, self.V))
        batch = tf.gather(self.batch_index, tf.minimum(n, self.batch_sizes[-1]))
        branches = [lambda B=B: self._run_batches(B, rows, tables, options, cap) for B in self.batch_sizes]
        return tf.switch_case(batch, branches)[:n]

    def _run_batches(self, B: int, rows: dict, tables, options, cap):
        """Run ``rows`` in chunks of ``B`` (the last one padded with finished rows)."""
        import tensorflow as tf

        n = tf.shape(rows["ids"])[0]
        chunks = (n + B - 1) // B
        pad = chunks * B - n
        fill = {"ids": 0, "lengths": 1, "seeds": 0, "done": True, "state": 0, "group": -1}
        rows = {k: tf.concat([v, tf.fill(tf.concat([[pad], tf.shape(v)[1:]], 0), tf.cast(fill[k], v.dtype))], 0)
                for k, v in rows.items()}

        def body(c, out):
            r = {k: tf.reshape(v[c * B:(c + 1) * B], [B, *v.shape[1:]]) for k, v in rows.items()}
            bucket = tf.gather(self.bucket_index, tf.reduce_max(r["lengths"]))
            logits, cache, seen = tf.switch_case(bucket, [
                lambda T=T: self.sampler.prefill(r["ids"][:, :T], r["lengths"]) for T in self.buckets])
            decoded = tf.switch_case(cap, [
                lambda k=k: self.sampler.decode(logits, cache, seen, r["lengths"], r["seeds"], r["done"], options, k,
                                                constraints, (r["state"], r["group"], tables))[0] for k in self.caps])
            return c + 1, out.write(c, decoded)

        out = tf.TensorArray(tf.int32, size=chunks, element_shape=[B, self.n_ctx])
        return tf.while_loop(lambda c, _: c < chunks, body, (tf.constant(0), out))[1].concat()

    def _poems(self, text, out, active, seeds, errors) -> dict:
        """The outputs: ids back to text, cut after the first 】 (as ``PoemGenerator._sample``)."""
        import tensorflow as tf

        is_close = out == self.close_id
        closed = tf.reduce_any(is_close, axis=1) & active
        first = tf.argmax(tf.cast(is_close, tf.int32), axis=1, output_type=tf.int32)
        keep = tf.where(closed[:, None], tf.range(self.n_ctx)[None, :] <= first[:, None], out != PAD_ID)
        keep &= active[:, None]
        written = tf.strings.reduce_join(tf.ragged.boolean_mask(tf.gather(self.token_text, out), keep), axis=1)
        return {"poem": tf.where(active, tf.strings.join([text, written]), ""), "closed": closed,
                "tokens": tf.reduce_sum(tf.cast(keep, tf.int32), axis=1), "seed": seeds, "error": errors}


def _info(gen, run, checkpoint, batch_sizes) -> dict:
    """The facts written to ``assets/poetry_gpt.json``."""
    import importlib.metadata

    import tensorflow as tf

    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    meta = gen.export.meta
    return {"poetry_gpt_version": __version__, "tensorflow": tf.__version__, "transformers": version("transformers"),
            "source": {"run": str(Path(run).resolve()), "weights": str(gen.export.path), "checkpoint": checkpoint,
                       "global_step": meta.get("global_step"), "vocab_hash": gen.vocab.hash},
            "genre": gen.genre, "n_ctx": gen.n_ctx, "vocab_size": gen.vocab.size, "batch_sizes": list(batch_sizes),
            "signature": "serving_default",
            "inputs": {name: {"dtype": dtype, "shape": ["batch"] if shape else [], "default": default, "meaning": what}
                       for name, dtype, shape, default, what in INPUTS},
            "outputs": {name: {"dtype": dtype, "shape": ["batch"], "meaning": what} for name, dtype, what in OUTPUTS},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def parse_batch_sizes(text: str | Sequence[int]) -> list[int]:
    """``"1,8"`` → ``[1, 8]``; each in 1..``MAX_BATCH_SIZE``.

    Args:
        text: comma-separated batch sizes, or a sequence of ints.

    Raises:
        OptionError: not integers, or out of range.
    """
    try:
        sizes = [int(s) for s in (text.split(",") if isinstance(text, str) else text) if str(s).strip()]
    except ValueError:
        raise OptionError(f"--batch-sizes: expected comma-separated integers such as 1,8, got {text!r}") from None
    if not sizes or any(not 1 <= s <= MAX_BATCH_SIZE for s in sizes):
        raise OptionError(f"--batch-sizes: each must be in 1..{MAX_BATCH_SIZE}, got {text!r}")
    return sorted(set(sizes))


def check_target(out: Path, overwrite: bool, run: str | os.PathLike) -> None:
    """Refuse a ``--saved-model`` folder whose replacement would lose something the user had.

    ``out`` may not be a file, hold the run or lie inside it; an existing non-empty ``out`` is
    replaced only with ``overwrite``, and only when it is a SavedModel this command wrote
    (``assets/poetry_gpt.json``).

    Args:
        out: the SavedModel folder to write.
        overwrite: ``--overwrite`` was given.
        run: the RUN_DIR or export folder read.
    """
    if out.exists() and not out.is_dir():
        raise OptionError(f"--saved-model: {out} is a file; choose a folder name")
    if is_within(run, out) or is_within(out, run):
        raise OptionError(f"--saved-model: {out} holds or lies inside the --run {run}; choose a folder outside it")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not (out / "assets" / ASSET).is_file():
        raise OptionError(f"--saved-model: {out} is not empty and is not a SavedModel written by `poetry-gpt export` "
                          f"(no assets/{ASSET}); --overwrite replaces only those; choose another folder")
    if not overwrite:
        raise OptionError(f"--saved-model: {out} already exists; pass --overwrite to replace it, or choose another "
                          "folder")


def export_saved_model(run: str | os.PathLike, out: str | os.PathLike, checkpoint: str | None = None,
                       batch_sizes: str | Sequence[int] = DEFAULT_BATCH_SIZES, overwrite: bool = False) -> dict:
    """Write the SavedModel of a run to ``out`` atomically (a temporary folder next to it, then a rename).

    Args:
        run: a RUN_DIR or export folder (as ``PoemGenerator``).
        out: the SavedModel folder to create.
        checkpoint: use this training checkpoint instead of the export (see ``load_model``).
        batch_sizes: batch sizes to trace programs for ("1,8" or a sequence).
        overwrite: replace an existing ``out``.

    Returns:
        ``assets/poetry_gpt.json``'s content plus ``seconds`` and ``bytes`` (size on disk).

    Raises:
        OptionError: ``out`` exists (without ``overwrite``) or is a file, or bad batch sizes.
        RunDirError: the run cannot be loaded.
    """
    import tensorflow as tf

    from ..generate.generator import PoemGenerator

    sizes = parse_batch_sizes(batch_sizes)
    out = Path(out)
    aside = out.with_name(f".{out.name}.old")
    recover_aside(out, aside)  # a replace killed between its two renames (where no atomic exchange exists)
    check_target(out, overwrite, run)
    t0 = time.perf_counter()
    gen = PoemGenerator(run, checkpoint)
    poet = SavedPoet(gen, sizes)
    info = _info(gen, run, checkpoint, sizes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tf.saved_model.save(poet.module, str(tmp), signatures={"serving_default": poet.module.generate})
        (tmp / "assets").mkdir(exist_ok=True)
        atomic_write_json(tmp / "assets" / ASSET, info)
        fsync_dir(tmp)
        replace_dir(tmp, out, aside)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {**info, "seconds": round(time.perf_counter() - t0, 2), "bytes": size}


def read_info(saved_model: str | os.PathLike) -> dict:
    """``assets/poetry_gpt.json`` of a SavedModel written by ``export_saved_model``."""
    return json.loads((Path(saved_model) / "assets" / ASSET).read_text(encoding="utf-8"))
