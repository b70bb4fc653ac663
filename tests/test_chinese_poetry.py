"""chinese-poetry JSON import and download (downloads go to a local HTTP server only)."""
from __future__ import annotations

import functools
import http.server
import json
import socket
import threading
import urllib.parse

import pytest
from click.testing import CliRunner

from poetry_gpt.data import chinese_poetry as cp
from poetry_gpt.cli import main
from poetry_gpt.data.corpus import parse_line
from poetry_gpt.errors import InputError, OptionError

TANG = "全唐诗"
GOOD = {"title": "春曉", "paragraphs": ["春眠不覺曉，處處聞啼鳥。", "夜來風雨聲，花落知多少。"]}


@pytest.fixture(scope="module")
def tang_dir(shared_corpus):
    return shared_corpus / "chinese-poetry" / TANG


@pytest.fixture(scope="module")
def server(shared_corpus):
    """A quiet local HTTP server for ``shared/corpus/chinese-poetry``; yields (root URL, requested paths)."""
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(urllib.parse.unquote(self.path))

    handler = functools.partial(Handler, directory=str(shared_corpus / "chinese-poetry"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", requests
    httpd.shutdown()
    httpd.server_close()


def write_json(path, items):
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    return path


def read_lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- import_json -----------------------------------------------------------------------------

def test_import_real_file_counts_and_parses(tang_dir, tmp_path):
    src = tang_dir / "poet.tang.0.json"
    n_poems = len(json.loads(src.read_text(encoding="utf-8")))
    out = tmp_path / "raw.txt"
    report = cp.import_json([src], out)
    assert report.poems == n_poems
    assert report.written + sum(report.skipped.values()) == n_poems
    assert report.written > 0.8 * n_poems
    lines = read_lines(out)
    assert len(lines) == report.written
    for line in lines:
        title, genre, body = parse_line(line)
        assert genre == "唐诗" and body
    assert lines[0] == "帝京篇十首 一 唐诗：【秦川雄帝宅，函谷壯皇居。綺殿千尋起，離宮百雉餘。連甍遙接漢，飛觀迥凌虛。雲日隱層闕，風煙出綺疎。】"
    assert report.files == [str(src)] and report.out_path == str(out)


def test_to_simplified_converts_title_and_body(tang_dir, tmp_path):
    out = tmp_path / "raw.txt"
    cp.import_json([tang_dir / "poet.tang.0.json"], out, to_simplified=True)
    first = read_lines(out)[0]
    assert first.startswith("帝京篇十首 一 唐诗：【秦川雄帝宅，函谷壮皇居。绮殿千寻起，离宫百雉余。")
    assert "壯" not in first

    small = write_json(tmp_path / "p.json", [GOOD, {"title": "靜夜思", "paragraphs": ["床前明月光，疑是地上霜。"]}])
    cp.import_json([small], out, to_simplified=True, overwrite=True)
    assert read_lines(out) == ["春晓 唐诗：【春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。】",
                               "静夜思 唐诗：【床前明月光，疑是地上霜。】"]


@pytest.mark.parametrize("bad, reason", [
    ({"title": "宿山寺", "paragraphs": ["偶來中峰宿，閑坐見真境。", "□□□滿山，花落始知靜。"]}, "lacuna"),
    ({"title": "失題", "paragraphs": ["一燈明一體，十鏡現十身。○"]}, "lacuna"),
    ({"title": "題", "paragraphs": ["遠去更宜長（辛本作「良」）。"]}, "brackets"),
    ({"title": "題", "paragraphs": ["還欲淚沾[襟]。"]}, "brackets"),
    ({"title": "題", "paragraphs": ["語渾{山/淪}。"]}, "brackets"),
    ({"title": "題", "paragraphs": ["見《五代詩話》卷九。"]}, "brackets"),
    ({"title": "題", "paragraphs": ["〔一作花〕落知多少。"]}, "brackets"),
    ({"title": "春【曉】", "paragraphs": ["春眠不覺曉。"]}, "brackets"),
    ({"title": "空", "paragraphs": []}, "empty_body"),
    ({"title": "空", "paragraphs": ["  ", ""]}, "empty_body"),
    ({"title": "題", "paragraphs": ["春眠不覺曉，\n處處聞啼鳥。"]}, "newline"),
    ({"title": "上\n下", "paragraphs": ["春眠不覺曉。"]}, "newline"),
])
def test_skip_reasons(tmp_path, bad, reason):
    src = write_json(tmp_path / "p.json", [GOOD, bad])
    out = tmp_path / "raw.txt"
    report = cp.import_json([src], out)
    assert report.written == 1 and report.poems == 2
    assert report.skipped == {reason: 1}
    assert report.examples == {reason: [(str(src), 1)]}
    assert read_lines(out) == ["春曉 唐诗：【春眠不覺曉，處處聞啼鳥。夜來風雨聲，花落知多少。】"]
    assert reason in cp.SKIP_REASONS and any(reason in s or "skipped 1" in s for s in report.summary_lines())


def test_title_whitespace_and_genre(tmp_path):
    src = write_json(tmp_path / "p.json", [
        {"title": " 新樂府 七德舞\t美撥亂 ", "paragraphs": [" 七德舞，七德歌。 "]},
        {"title": "", "paragraphs": ["無題之詩。"]},
        {"rhythmic": "浣溪沙", "paragraphs": ["一曲新詞酒一杯。"]},
    ])
    out = tmp_path / "raw.txt"
    cp.import_json([src], out, genre="宋词")
    assert read_lines(out) == ["新樂府 七德舞 美撥亂 宋词：【七德舞，七德歌。】", "宋词：【無題之詩。】",
                               "浣溪沙 宋词：【一曲新詞酒一杯。】"]
    for line in read_lines(out):
        assert not isinstance(parse_line(line), str)
    with pytest.raises(OptionError, match="--genre"):
        cp.import_json([src], tmp_path / "x.txt", genre="唐 诗")


def test_folder_is_read_in_natural_order(tmp_path):
    folder = tmp_path / "json"
    folder.mkdir()
    write_json(folder / "poet.tang.10000.json", [{"title": "後", "paragraphs": ["後詩。"]}])
    write_json(folder / "poet.tang.2000.json", [{"title": "前", "paragraphs": ["前詩。"]}])
    (folder / "notes.txt").write_text("not json", encoding="utf-8")
    report = cp.import_json([folder], tmp_path / "raw.txt")
    assert [p.rsplit("/", 1)[-1] for p in report.files] == ["poet.tang.2000.json", "poet.tang.10000.json"]
    assert read_lines(tmp_path / "raw.txt") == ["前 唐诗：【前詩。】", "後 唐诗：【後詩。】"]


@pytest.mark.parametrize("content, message", [
    ('[{"title": "a", "paragraphs": ["b"]},\n  {"title": }]', r"p\.json: not valid JSON at line 2, column 13"),
    ('{"title": "a"}', r"p\.json: expected a JSON list of poems"),
    ('[{"title": "a", "paragraphs": ["b"]}, {"title": "c", "paragraphs": "d"}]', r"p\.json: item \[1\] is not a poem"),
    ('[{"title": "a", "paragraphs": ["b"]}, ["c"]]', r"p\.json: item \[1\]"),
    ('[{"title": 3, "paragraphs": ["b"]}]', r"p\.json: item \[0\]"),
    ('[{"title": "a", "paragraphs": ["□"]}]', r"p\.json: no poem could be imported \(lacunae"),
])
def test_bad_json_is_one_line_input_error(tmp_path, content, message):
    src = tmp_path / "p.json"
    src.write_text(content, encoding="utf-8")
    out = tmp_path / "raw.txt"
    with pytest.raises(InputError, match=message) as exc:
        cp.import_json([src], out)
    assert "\n" not in str(exc.value)
    assert not out.exists() and not (tmp_path / "raw.txt.tmp").exists()


def test_missing_inputs_and_existing_output(tmp_path):
    with pytest.raises(InputError, match="nope.json: no such file"):
        cp.import_json([tmp_path / "nope.json"], tmp_path / "raw.txt")
    with pytest.raises(InputError, match="no \\*.json files"):
        cp.import_json([tmp_path], tmp_path / "raw.txt")
    src = write_json(tmp_path / "p.json", [GOOD])
    out = tmp_path / "raw.txt"
    out.write_text("keep me\n", encoding="utf-8")
    with pytest.raises(OptionError, match="raw.txt: already exists; pass --overwrite"):
        cp.import_json([src], out)
    assert out.read_text(encoding="utf-8") == "keep me\n"
    assert cp.import_json([src], out, overwrite=True).written == 1
    assert read_lines(out)[0].startswith("春曉 唐诗：【")


# --- download --------------------------------------------------------------------------------

def test_download_from_local_server_and_resume(server, tang_dir, tmp_path):
    root, requests = server
    names = list(cp.TANG_FILES[:2])
    assert len(cp.TANG_FILES) == len(list(tang_dir.glob("poet.tang.*.json")))
    dest = tmp_path / "dl"
    paths = cp.download(dest, base_url=root + TANG, files=names)
    assert paths == [dest / n for n in names]
    for p in paths:
        assert p.read_bytes() == (tang_dir / p.name).read_bytes()
    assert not list(dest.glob("*.part"))

    # a second run fetches only what is missing or broken
    paths[1].write_text("[{\"title\"", encoding="utf-8")
    requests.clear()
    cp.download(dest, base_url=root + TANG, files=names)
    assert requests == [f"/{TANG}/{names[1]}"]
    assert paths[1].read_bytes() == (tang_dir / names[1]).read_bytes()

    assert cp.download_license(dest, base_url=root + TANG + "/") == dest / "LICENSE"
    assert "MIT" in (dest / "LICENSE").read_text(encoding="utf-8")


def test_download_errors_are_one_line(server, tmp_path):
    root, _ = server
    with pytest.raises(InputError, match=r"poet\.tang\.99\.json: HTTP 404 .*--base-url") as exc:
        cp.download(tmp_path, base_url=root + TANG, files=["poet.tang.99.json"])
    assert "\n" not in str(exc.value)
    assert not list(tmp_path.iterdir())
    with pytest.raises(InputError, match=r"README\.md: the server did not send a JSON list"):
        cp.download(tmp_path, base_url=root + TANG, files=["README.md"])
    assert not list(tmp_path.iterdir())
    url = f"http://127.0.0.1:{free_port()}/x/"
    with pytest.raises(InputError, match=r"http://127\.0\.0\.1:\d+/x/poet\.tang\.0\.json: cannot download"):
        cp.download(tmp_path, base_url=url, files=["poet.tang.0.json"], timeout=5)
    assert cp.download_license(tmp_path, base_url=url, timeout=5) is None


def test_cli_download_limit(server, tmp_path):
    root, _ = server
    encoded = root + urllib.parse.quote(TANG) + "/"  # an already-encoded URL works too
    dest, out = tmp_path / "dl", tmp_path / "raw.txt"
    args = ["corpus", "download", "--base-url", encoded, "--dest", str(dest), "--out", str(out), "--limit", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in dest.iterdir()) == ["LICENSE", "poet.tang.0.json", "poet.tang.1000.json"]
    lines = read_lines(out)
    assert 1600 < len(lines) < 2000 and "壮皇居" in lines[0]
    assert result.output.strip().splitlines()[-1] == f"Done: {len(lines)} poems in {out} (JSON files in {dest})."

    # --out exists: refused before anything is downloaded
    again = CliRunner().invoke(main, args[:5] + [str(tmp_path / "dl2")] + args[6:])
    assert again.exit_code == 1
    assert "already exists; pass --overwrite" in again.output and not (tmp_path / "dl2").exists()


@pytest.mark.parametrize("where", ["404", "refused"])
def test_cli_download_failure_exit_1(server, tmp_path, where):
    root, _ = server
    base = root + "missing/" if where == "404" else f"http://127.0.0.1:{free_port()}/"
    result = CliRunner().invoke(main, ["corpus", "download", "--base-url", base, "--dest", str(tmp_path / "dl"),
                                       "--out", str(tmp_path / "raw.txt"), "--limit", "1", "--timeout", "5"])
    assert result.exit_code == 1
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and "poet.tang.0.json" in err[0]
    assert not (tmp_path / "raw.txt").exists()


# --- CLI import ------------------------------------------------------------------------------

def test_cli_import(tmp_path):
    src = write_json(tmp_path / "p.json", [GOOD, {"title": "殘", "paragraphs": ["□□"]}])
    out = tmp_path / "raw.txt"
    runner = CliRunner()
    result = runner.invoke(main, ["corpus", "import", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"Wrote 1 of 2 poems from 1 file(s) to {out}" in result.output
    assert "skipped 1: lacunae" in result.output
    assert read_lines(out) == ["春晓 唐诗：【春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。】"]

    out.write_text("keep me\n", encoding="utf-8")
    result = runner.invoke(main, ["corpus", "import", str(src), "--out", str(out), "--keep-traditional"])
    assert result.exit_code == 1 and "--overwrite" in result.stderr
    assert out.read_text(encoding="utf-8") == "keep me\n"
    result = runner.invoke(main, ["corpus", "import", str(src), "--out", str(out), "--keep-traditional", "--overwrite"])
    assert result.exit_code == 0 and read_lines(out)[0].startswith("春曉 唐诗：")


def test_cli_import_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"title\": \"a\",", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(main, ["corpus", "import", str(bad), "--out", str(tmp_path / "raw.txt")])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert f"{bad}: not valid JSON at line 1" in result.stderr
    result = runner.invoke(main, ["corpus", "import", str(tmp_path / "nope.json"), "--out", str(tmp_path / "r.txt")])
    assert result.exit_code == 1 and "nope.json: no such file" in result.stderr
    assert runner.invoke(main, ["corpus", "import", "--out", str(tmp_path / "r.txt")]).exit_code == 2
    assert not (tmp_path / "raw.txt").exists() and not (tmp_path / "r.txt").exists()
