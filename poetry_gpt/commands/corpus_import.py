"""``poetry-gpt corpus import`` and ``corpus download``: chinese-poetry JSON -> raw.txt."""
from __future__ import annotations

import click

from ..data import chinese_poetry as cp

_GENRE_HELP = "Genre word written before ：【 on every line."
_SIMPLIFIED_HELP = "Convert titles and bodies to simplified characters (OpenCC t2s), or keep them traditional."
_OVERWRITE_HELP = "Replace --out if it already exists."


def _echo_report(report: cp.ImportReport) -> None:
    for line in report.summary_lines():
        click.echo(line)


@click.command("import")
@click.argument("sources", nargs=-1, required=True, metavar="JSON_OR_DIR...",
                type=click.Path(path_type=str))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="raw.txt to write (one poem a line: title 体裁：【body】).")
@click.option("--genre", default="唐诗", show_default=True, help=_GENRE_HELP)
@click.option("--to-simplified/--keep-traditional", "to_simplified", default=True, show_default=True,
              help=_SIMPLIFIED_HELP)
@click.option("--overwrite", is_flag=True, default=False, show_default=True, help=_OVERWRITE_HELP)
def import_cmd(sources, out, genre, to_simplified, overwrite):
    """Convert chinese-poetry JSON files (or folders of them) into a raw.txt.

    Poems with lacunae (□), editorial notes in brackets, empty bodies or line
    breaks are skipped and counted by reason.
    """
    _echo_report(cp.import_json(sources, out, genre=genre, to_simplified=to_simplified, overwrite=overwrite))


@click.command("download")
@click.option("--dest", default="dataset/chinese-poetry", show_default=True,
              type=click.Path(file_okay=False, path_type=str),
              help="Folder for the downloaded JSON files; files already there are not fetched again.")
@click.option("--out", "out", default="dataset/raw.txt", show_default=True,
              type=click.Path(dir_okay=False, path_type=str), help="raw.txt to write from the downloaded files.")
@click.option("--base-url", default=cp.DEFAULT_BASE_URL, show_default=True,
              help="URL of the folder holding poet.tang.*.json (a mirror or a local server).")
@click.option("--genre", default="唐诗", show_default=True, help=_GENRE_HELP)
@click.option("--to-simplified/--keep-traditional", "to_simplified", default=True, show_default=True,
              help=_SIMPLIFIED_HELP)
@click.option("--overwrite", is_flag=True, default=False, show_default=True, help=_OVERWRITE_HELP)
@click.option("--limit", type=click.IntRange(min=0), default=0, show_default=True,
              help="Fetch only the first N files (for tests and partial downloads); 0 = all 58.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=cp.DEFAULT_TIMEOUT,
              show_default=True, help="Seconds to wait for the server on each request.")
def download_cmd(dest, out, base_url, genre, to_simplified, overwrite, limit, timeout):
    """Download the chinese-poetry 全唐诗 JSON files (MIT licence) and import them into a raw.txt."""
    cp.check_genre(genre)
    cp.check_output(out, overwrite)  # fail before downloading, not after
    names = list(cp.TANG_FILES[:limit] if limit else cp.TANG_FILES)
    from tqdm import tqdm

    with tqdm(total=len(names), desc="download", unit="file", disable=None) as bar:
        paths = cp.download(dest, base_url=base_url, files=names, timeout=timeout, progress=lambda _: bar.update())
    licence = cp.download_license(dest, base_url=base_url, timeout=timeout)
    click.echo(f"Downloaded {len(paths)} file(s) to {dest}"
               + (f" (licence: {licence})" if licence else " (licence not fetched: see the chinese-poetry repository)"))
    report = cp.import_json(paths, out, genre=genre, to_simplified=to_simplified, overwrite=overwrite)
    _echo_report(report)
    click.echo(f"Done: {report.written} poems in {report.out_path} (JSON files in {dest}).")
