"""study.py without a browser: creating a study, blinding (nothing a reader receives names an image, every image
alike), the server's refusals, answers stored once and kept, the report of known answers, and bad input."""
import csv
import io
import json
import sqlite3

import pytest
from PIL import Image

import study as study_cli
from in_process import run_main
from reader_study import database
from reader_study.create import StudySpec, create_study
from reader_study.reading import Refused, Study
from study_server import Server, is_first_set, write_set

SECRETS = ("alphaset", "betaset", "ALPHAIMG", "BETAIMG", "secret", "parameters", "prompt")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    a = write_set(root / "alphaset", 5, 50, 1, "ALPHAIMG")
    b = write_set(root / "betaset", 5, 200, 2, "BETAIMG", size=(64, 48))
    Image.new("RGB", (40, 32), (60, 60, 60)).save(a / "ALPHAIMG_rgb_grey.png")  # grey stored as RGB
    Image.new("I;16", (40, 32), 40000).save(b / "BETAIMG_16bit.png")            # 16-bit, another size
    return a, b


def make(tmp_path, sets, task="preference", readers=("r1", "r2"), **kw):
    a, b = sets
    folders = {"a": a, "b": b} if task == "preference" else {"real": a, "synthetic": b}
    return create_study(tmp_path / "study", StudySpec(task=task, folders=folders, pairs=4, readers=readers, **kw))


@pytest.fixture(scope="module")
def served(tmp_path_factory, sets):
    folder = make(tmp_path_factory.mktemp("served"), sets)
    server = Server(folder).start()
    yield folder, server
    server.stop()


def test_every_image_is_blinded_alike(tmp_path, sets):
    folder = make(tmp_path, sets, task="real-or-synthetic", per_set=6)
    files = sorted((folder / "images").iterdir())
    assert len(files) == 12
    for f in files:
        data = f.read_bytes()
        im = Image.open(io.BytesIO(data))
        assert (im.format, im.mode, im.size) == ("PNG", "L", (40, 32))  # the first set's size and grey mode
        assert png_chunks(data) == ["IHDR", "IDAT", "IEND"] or set(png_chunks(data)) == {"IHDR", "IDAT", "IEND"}
        assert not any(s.lower().encode() in data.lower() for s in SECRETS)
        assert len(f.stem) == 32 and "ALPHA" not in f.name and "BETA" not in f.name


def png_chunks(data: bytes) -> list:
    chunks, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        chunks.append(data[at + 4:at + 8].decode())
        at += 12 + length
    return chunks


def test_nothing_the_browser_receives_names_an_image(served):
    folder, server = served
    study = Study(folder)
    responses = []
    for reader in study.readers():
        state_path = f"/r/{reader.token}/state"
        responses += [server.request("GET", f"/r/{reader.token}"), server.request("GET", state_path),
                      server.request("GET", "/static/study.js"), server.request("GET", "/static/study.css")]
        state = json.loads(responses[-3][2])
        for url in state["item"]["images"]:
            status, headers, body = server.request("GET", url)
            assert status == 200 and headers["content-type"] == "image/png"
            assert set(png_chunks(body)) == {"IHDR", "IDAT", "IEND"}
            responses.append((status, headers, body))
    study.close()
    for status, headers, body in responses:
        text = (json.dumps(headers) + body.decode("latin-1")).lower()
        leaked = [s for s in SECRETS + (str(folder.parent),) if s.lower() in text]
        assert status == 200 and not leaked, leaked


def answer_body(key, answer="Left", time_ms=800):
    return json.dumps({"item": key, "answer": answer, "time_ms": time_ms}).encode()


def test_refusals_store_nothing_and_serve_nothing_outside(served):
    folder, server = served
    study = Study(folder)
    first, second = study.readers()
    key1 = study.state(first)["item"]["key"]
    key2 = study.state(second)["item"]["key"]
    post = {"Content-Type": "application/json"}
    refused = [
        server.request("GET", "/r/" + "0" * 32 + "/state"), server.request("GET", "/r//state"),
        server.request("GET", "/"), server.request("GET", "/images/"), server.request("GET", "/static/"),
        server.request("POST", "/r/" + "0" * 32 + "/answer", answer_body(key1), post),
        server.request("POST", f"/r/{first.token}/answer", answer_body(key2), post),       # the other reader's item
        server.request("GET", f"/r/{first.token}/image/{key2}/0"),                          # ... and its image
        server.request("GET", f"/r/{first.token}/image/{key1}/2"),
        server.request("POST", f"/r/{first.token}/answer", answer_body(key1, "Centre"), post),
        server.request("POST", f"/r/{first.token}/answer", answer_body(key1, time_ms=-5), post),
        server.request("POST", f"/r/{first.token}/answer", answer_body(key1, time_ms="soon"), post),
        server.request("POST", f"/r/{first.token}/answer", b"{not json", post),
        server.request("POST", f"/r/{first.token}/answer", b"[1, 2]", post),
        server.request("POST", f"/r/{first.token}/answer", b"\xff\xfe", post),
        server.request("POST", f"/r/{first.token}/answer", b"x" * 100_000, post),            # oversized
        server.request("POST", f"/r/{first.token}/answer", b"3\r\n{\"i\r\n0\r\n\r\n",
                       {"Transfer-Encoding": "chunked", "Content-Type": "application/json"}),
        server.request("POST", f"/r/{first.token}/answer", chunked(b" " * 20_000), {"Transfer-Encoding": "chunked"}),
        server.request("GET", f"/r/{first.token}/answer"),
    ]
    for path in traversals(first.token, key1):
        refused.append(server.request("GET", path))
    statuses = [status for status, _, _ in refused]
    assert all(400 <= s < 500 for s in statuses), [(i, s) for i, s in enumerate(statuses) if not 400 <= s < 500]
    assert not any(b"SQLite format" in body or b"PNG" in body[:8] for _, _, body in refused)
    assert database.answer_count(folder) == 0
    study.close()


def chunked(data: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 1000]), data[i:i + 1000]) for i in range(0, len(data), 1000)) \
        + b"0\r\n\r\n"


def traversals(token: str, key: str) -> list:
    return ["/static/../study.sqlite", "/static/..%2fstudy.sqlite", "/static/%2e%2e/study.sqlite",
            "/static/..%252fstudy.sqlite", "/study.sqlite", "/images", "/readers.csv",
            f"/r/{token}/../../study.sqlite", f"/r/{token}/..%2f..%2fstudy.sqlite",
            f"/r/{token}/image/..%2F..%2Fstudy.sqlite/0", f"/r/{token}/image/{key}/..%2f..%2fstudy.sqlite",
            f"/r/{token}/image/{key}/0/../../../../study.sqlite", "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            "/static/....//....//etc/passwd", "/r/../../etc/passwd", f"/r/{token}/image/{key}/%30%2f"]


def test_an_answer_counts_once_and_survives_reopening(tmp_path, sets):
    folder = make(tmp_path, sets, readers=("r1",))
    study = Study(folder)
    reader = study.readers()[0]
    key = study.state(reader)["item"]["key"]
    assert study.answer(reader, key, "Right", 900) is True
    assert study.answer(reader, key, "Left", 100) is False  # double click, second tab, resend after restart
    with pytest.raises(Refused):
        study.answer(reader, "f" * 32, "Left", 100)
    study.close()
    db = sqlite3.connect(folder / database.DATABASE)
    assert db.execute("SELECT reader, answer, time_ms FROM answers").fetchall() == [("r1", "Right", 900)]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    reopened = Study(folder)
    state = reopened.state(reader)
    assert state["answered"] == 1 and state["item"]["position"] == 2 and state["item"]["key"] != key
    reopened.close()


def test_report_of_known_answers(tmp_path, sets):
    """Prefer A in 3 of the 4 pairs: the report says 3/4 with the exact CI and p, and readings.csv has 4 rows."""
    folder = make(tmp_path, sets, readers=("r1",))
    study = Study(folder)
    reader = study.readers()[0]
    for i in range(4):
        state = study.state(reader)
        left, right = (open(study.image_path(reader, state["item"]["key"], s), "rb").read() for s in (0, 1))
        assert is_first_set(left) != is_first_set(right)
        prefer_a = i != 2
        study.answer(reader, state["item"]["key"], "Left" if is_first_set(left) == prefer_a else "Right", 1000 + i)
    study.close()
    result = run_main(study_cli.main, "report", folder)
    assert result.returncode == 0, result.stderr
    report = json.loads((folder / "report.json").read_text())
    r1 = report["readers"]["r1"]
    assert (r1["k"], r1["n"], r1["answered"], r1["total"]) == (3, 4, 4, 4)
    assert r1["p_value"] == pytest.approx(0.625) and r1["ci95"][0] == pytest.approx(0.19412, abs=1e-4)
    assert r1["median_time_ms"] == 1001.5
    rows = list(csv.DictReader(open(folder / "readings.csv")))
    assert [row["chosen"] for row in rows].count("alphaset") == 3 and len(rows) == 4
    assert (folder / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "3/4" in result.stdout


@pytest.mark.parametrize("args, words", [
    (["create", "{s}", "--task", "preference", "--a", "{a}", "--b", "{missing}"], "--b"),
    (["create", "{s}", "--task", "preference", "--a", "{a}", "--b", "{empty}"], "no images"),
    (["create", "{s}", "--task", "preference", "--a", "{a}", "--b", "{b}", "--pairs", "9"], "--pairs 9"),
    (["create", "{s}", "--task", "real-or-synthetic", "--real", "{a}", "--synthetic", "{b}", "--per-set", "7"],
     "--per-set 7"),
    (["create", "{s}", "--task", "label", "--real", "{labels_a}", "--synthetic", "{labels_b}"], "classes"),
    (["create", "{s}", "--task", "preference", "--a", "{a}", "--b", "{b}", "--size", "big"], "--size"),
    (["create", "{s}", "--task", "preference", "--a", "{a}", "--b", "{b}", "--readers", "a,a"], "--readers"),
    (["create", "{s}", "--task", "preference", "--a", "{a}\udcff", "--b", "{b}"], "UTF-8"),
    (["create", "{s}"], "--task"),
    (["create", "{a}/ALPHAIMG_0.png/study", "--task", "preference", "--a", "{a}", "--b", "{b}"], "is a file"),
    (["report", "{missing}"], "not a study"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, sets, args, words):
    a, b = sets
    (tmp_path / "empty").mkdir()
    for name, classes in (("labels_a", ("normal", "effusion")), ("labels_b", ("normal", "nodule"))):
        for c in classes:
            write_set(tmp_path / name / c, 1, 80, 0, c)
    paths = {"s": tmp_path / "study", "a": a, "b": b, "missing": tmp_path / "missing", "empty": tmp_path / "empty",
             "labels_a": tmp_path / "labels_a", "labels_b": tmp_path / "labels_b"}
    before = sorted(tmp_path.rglob("*"))
    result = run_main(study_cli.main, *[arg.format(**paths) for arg in args])
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert sorted(tmp_path.rglob("*")) == before


def test_overwrite_never_deletes_answers(tmp_path, sets):
    folder = make(tmp_path, sets, readers=("r1",))
    args = ["create", folder, "--task", "preference", "--a", sets[0], "--b", sets[1], "--pairs", "3"]
    assert "exists" in run_main(study_cli.main, *args).stderr
    assert run_main(study_cli.main, *args, "--overwrite").returncode == 0  # no answers yet: replaced
    study = Study(folder)
    reader = study.readers()[0]
    study.answer(reader, study.state(reader)["item"]["key"], "Left", 10)
    study.close()
    result = run_main(study_cli.main, *args, "--overwrite")
    assert result.returncode == 2 and "never deletes answers" in result.stderr
    assert database.answer_count(folder) == 1
    not_a_study = ["create", sets[0], "--task", "preference", "--a", sets[0], "--b", sets[1], "--pairs", "3"]
    assert "not a study" in run_main(study_cli.main, *not_a_study, "--overwrite").stderr  # the images are kept
    assert len(list(sets[0].iterdir())) == 6


def test_serve_refuses_a_port_in_use(served):
    folder, server = served
    result = run_main(study_cli.main, "serve", folder, "--port", server.port)
    assert result.returncode == 2 and f"--port {server.port}" in result.stderr


def test_demo_study_and_label_task(tmp_path):
    result = run_main(study_cli.main, "create", "--demo", tmp_path / "demo", "--task", "label", "--readers", "x,y")
    assert result.returncode == 0 and "study.py serve" in result.stdout, result.stderr
    study = Study(tmp_path / "demo")
    assert study.question.choices == ("nodule", "normal")
    for reader in study.readers():
        while not (state := study.state(reader))["done"]:
            study.answer(reader, state["item"]["key"], "normal", 500)
    study.close()
    assert run_main(study_cli.main, "report", tmp_path / "demo").returncode == 0
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    x = report["readers"]["x"]
    assert (x["real"]["k"], x["real"]["n"], x["synthetic"]["k"], x["synthetic"]["n"]) == (4, 8, 4, 8)
    assert x["real"]["confusion"]["nodule"]["normal"] == 4 and x["fisher_p"] == pytest.approx(1.0)
    assert report["agreement"]["cohen_kappa"] is None  # both readers always said 'normal': kappa undefined


def test_serve_prints_one_link_per_reader_and_warns_off_loopback(served):
    from reader_study.web import is_loopback
    folder, server = served
    links = [server.process.stdout.readline().strip() for _ in range(2)]
    tokens = [row["token"] for row in csv.DictReader(open(folder / "readers.csv"))]
    assert links == [f"r{i + 1}: http://127.0.0.1:{server.port}/r/{token}" for i, token in enumerate(tokens)]
    assert all(len(token) == 32 and int(token, 16) >= 0 for token in tokens)  # 128 bits, hex
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
