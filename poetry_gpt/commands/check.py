"""``poetry-gpt check``: the 格律 (tones, pattern, rhyme) of poems."""
from __future__ import annotations

import dataclasses
import json

import click


@click.command("check")
@click.argument("poems", nargs=-1)
@click.option("--file", "raw_file", type=click.Path(dir_okay=False, path_type=str),
              help="Check every poem of this raw.txt instead of POEMS.")
@click.option("--leniency", type=click.Choice(["standard", "strict"]), default="standard", show_default=True,
              help="Report the pattern and violations at this leniency (both pass figures are always given).")
@click.option("--script", type=click.Choice(["auto", "simplified", "traditional"]), default="auto", show_default=True,
              help="Look characters up as simplified or traditional (auto: traditional when OpenCC t2s changes the text).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per poem (a JSON list).")
def check_cmd(poems, raw_file, leniency, script, as_json):
    """Check the 格律 of POEMS (bodies, or raw.txt lines `title 体裁：【body】`) or of --file."""
    from ..errors import OptionError
    from ..verse.metre import check_poem

    if bool(poems) == bool(raw_file):
        raise OptionError("check: give poems as arguments or --file raw.txt (one of them)")
    bodies = _file_bodies(raw_file) if raw_file else [_body(p) for p in poems]
    results = [check_poem(body, leniency, None if script == "auto" else script) for body in bodies]
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in results], ensure_ascii=False, indent=2))
        return
    for i, r in enumerate(results, 1):
        click.echo(format_check(r, i))
    if len(results) > 1:
        click.echo(summary(results))


def _body(text: str) -> str:
    """The body of a poem argument (text between 【 and 】 when it has them)."""
    from ..verse.forms import extract_body

    return extract_body(text.strip())[0] if "【" in text else text.strip()


def _file_bodies(path: str) -> list[str]:
    from ..data.corpus import read_corpus

    return [p.body for p in read_corpus([path], keep_duplicates=True).poems]


def format_check(r, number: int) -> str:
    """A poem's check as a few lines of text.

    Args:
        r: a ``metre.PoemCheck``.
        number: the poem's number in the output.
    """
    verdict = ", ".join(f"{n}: {'pass' if ok else 'fail'}" for n, ok in r.passes.items())
    if r.form is None:
        return f"{number}. {r.body[:40]} — {r.reason}"
    out = [f"{number}. {r.form} {r.pattern} ({r.sequence}) — {verdict}"]
    from ..verse.forms import get_form, split_clauses
    from ..verse.metre import pattern_lines

    clauses, marks = split_clauses(r.body)
    wanted = pattern_lines(get_form(r.form), r.sequence, r.leniency)
    for text, mark, tones_, want in zip(clauses, marks, r.char_tones, wanted):
        out.append(f"   {text}{mark}  {tones_}  (pattern {want})")
    groups = "/".join(r.rhyme_groups) or "no common 平声 group"
    out.append(f"   rhyme: {' '.join(r.rhyme_chars)} — {groups}")
    for v in r.violations:
        fault = f", {v.fault}" if v.fault else ""
        out.append(f"   line {v.line} char {v.position} {v.char}: {v.tone}, the pattern wants {v.required}{fault}")
    out.extend(f"   {fault}" for fault in r.rhyme_faults)
    if r.unknown:
        out.append(f"   not in the 平水韵 table (not judged): {''.join(r.unknown)}")
    return "\n".join(out)


def summary(results) -> str:
    """One line: how many poems are regular and pass each leniency."""
    regular = [r for r in results if r.form]
    shares = ", ".join(f"{n} {sum(r.passes[n] for r in regular)}" for n in ("standard", "strict"))
    return f"{len(results)} poem(s), {len(regular)} regular 绝句/律诗; passing: {shares}."
