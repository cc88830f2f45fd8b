"""Two readers read a whole preference and a whole real-or-synthetic study in headless Chromium, one by mouse and
one by keyboard, in two tabs at once; halfway the server is killed with `kill -9` and started again. The report
must then hold exactly the answers given. Each test knows the truth of what it sees from the image's pixels (the
first set is dark, the second bright), never from the study.

Chromium and its driver come from the system's packages (.ci/run installs `chromium chromium-driver`); selenium
is pointed at /usr/bin/chromedriver, so nothing is downloaded. Without them these tests skip, saying why."""
import csv
import json
import shutil
import urllib.request

import pytest

import study as study_cli
from in_process import run_main
from reader_study.create import StudySpec, create_study
from study_server import Server, is_first_set, write_set

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -r "
                                "requirements-dev.txt)")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT_S = 60  # a restarted server imports torch (through mini_ldm) before it listens: slow on a busy machine


def browser_paths():
    binary = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    # Debian's chromium-driver puts chromedriver in /usr/bin; named explicitly, selenium-manager never downloads one
    driver = shutil.which("chromedriver") or shutil.which("chromedriver", path="/usr/bin:/usr/lib/chromium")
    return binary, driver


@pytest.fixture(scope="module")
def browser():
    binary, driver_path = browser_paths()
    if not (binary and driver_path):
        reason = "no Chromium or chromedriver on this machine (apt-get install chromium chromium-driver)"
        print(f"skipping the browser tests: {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1200,900", "--disable-extensions"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


class Reading:
    """One reader's tab: opens their link, answers by `plan`, checks the page moved on."""

    def __init__(self, driver, server, token, by_keyboard, plan):
        self.driver, self.server, self.by_keyboard, self.plan = driver, server, by_keyboard, plan
        self.position, self.given = 1, []
        driver.switch_to.new_window("tab")
        self.tab = driver.current_window_handle
        driver.get(server.url(f"/r/{token}"))

    def wait_for(self, position) -> None:
        WebDriverWait(self.driver, WAIT_S).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-position") == str(position))

    def look(self) -> list:
        """Per image shown, True where it is from the first (dark) set."""
        self.driver.switch_to.window(self.tab)
        self.wait_for(self.position)
        assert self.driver.find_element(By.ID, "progress").text == f"{self.position} / {self.total}"
        urls = [img.get_attribute("src") for img in self.driver.find_elements(By.CSS_SELECTOR, "#images img")]
        return [is_first_set(urllib.request.urlopen(url, timeout=10).read()) for url in urls]

    def give(self, seen, double=False) -> None:
        label, keys = self.plan(self.position, seen)
        self.given.append((self.position, seen, label))
        if self.by_keyboard:
            ActionChains(self.driver).send_keys(keys).perform()
        else:
            button = self.driver.find_element(By.XPATH, f"//div[@id='choices']/button[text()='{label}']")
            (ActionChains(self.driver).double_click(button).perform() if double else button.click())
        self.position += 1

    def read(self, count, double_first=False) -> None:
        for i in range(count):
            self.give(self.look(), double=double_first and i == 0)

    def finish(self) -> None:
        self.driver.switch_to.window(self.tab)
        self.wait_for("done")
        assert "Reading complete" in self.driver.find_element(By.ID, "complete").text


def read_with_a_kill(browser, folder, plans, total):
    """Reader 1 by mouse and reader 2 by keyboard each read half; the server is killed (kill -9) with reader 1's
    next answer on its way and started again; both read the rest, reader 2 after reloading the page."""
    tokens = [row["token"] for row in csv.DictReader(open(folder / "readers.csv"))]
    server = Server(folder).start()
    try:
        readers = [Reading(browser, server, token, by_keyboard, plan)
                   for token, by_keyboard, plan in zip(tokens, (False, True), plans)]
        for reader in readers:
            reader.total = total
        half = total // 2
        readers[0].read(half, double_first=True)  # a double click counts once
        readers[1].read(half)
        seen = readers[0].look()
        server.kill9()
        readers[0].give(seen)  # sent to a dead server: the page retries until it answers
        server.start()
        readers[0].read(total - half - 1)
        browser.switch_to.window(readers[1].tab)
        browser.refresh()  # a reopened page continues at the first unanswered item
        readers[1].read(total - half)
        for reader in readers:
            reader.finish()
    finally:
        server.stop()
    assert run_main(study_cli.main, "report", folder).returncode == 0
    rows = list(csv.DictReader(open(folder / "readings.csv")))
    assert len(rows) == 2 * total and len({(r["reader"], r["item"]) for r in rows}) == 2 * total  # none twice
    for name, reader in zip(("ann", "bob"), readers):
        answers = [(int(r["order"]), r["answer"]) for r in rows if r["reader"] == name]
        assert answers == [(position, label) for position, _, label in reader.given]  # none lost, none changed
    return json.loads((folder / "report.json").read_text()), readers


def test_preference_study_in_a_browser(browser, tmp_path):
    a = write_set(tmp_path / "ti", 4, 50, 1, "ti")
    b = write_set(tmp_path / "gan", 4, 200, 2, "gan")
    folder = create_study(tmp_path / "study", StudySpec("preference", {"a": a, "b": b}, pairs=4,
                                                        readers=("ann", "bob"), seed=5))

    def plan(position, seen, prefer_a):
        a_left = seen[0]
        assert seen == [a_left, not a_left]  # one image of each set per pair
        left = a_left == prefer_a(position)
        return ("Left", Keys.ARROW_LEFT) if left else ("Right", "2" if position % 2 else Keys.ARROW_RIGHT)

    prefer = (lambda p: p != 3, lambda p: p % 2 == 1)  # ann prefers A 3 of 4 times, bob 2 of 4
    report, readers = read_with_a_kill(browser, folder, [lambda p, s, f=f: plan(p, s, f) for f in prefer], 4)
    for name, expected in (("ann", 3), ("bob", 2)):
        figures = report["readers"][name]
        assert (figures["k"], figures["n"], figures["answered"], figures["total"]) == (expected, 4, 4, 4)
    assert (report["pooled"]["k"], report["pooled"]["n"]) == (5, 8)
    # Cohen's kappa of 'chose A', from its definition over the items (each reader saw them in their own order)
    rows = list(csv.DictReader(open(folder / "readings.csv")))
    chose_a = {name: {r["item"]: r["chosen"] == "ti" for r in rows if r["reader"] == name} for name in ("ann", "bob")}
    pairs = [(chose_a["ann"][item], chose_a["bob"][item]) for item in chose_a["ann"]]
    observed = sum(x == y for x, y in pairs) / 4
    expected = (3 / 4) * (2 / 4) + (1 / 4) * (2 / 4)
    assert report["agreement"]["cohen_kappa"] == pytest.approx((observed - expected) / (1 - expected))
    assert report["agreement"]["n_items"] == 4


def test_real_or_synthetic_study_in_a_browser(browser, tmp_path):
    real = write_set(tmp_path / "real", 3, 50, 3, "real")
    synthetic = write_set(tmp_path / "synthetic", 3, 200, 4, "fake")
    folder = create_study(tmp_path / "study", StudySpec("real-or-synthetic", {"real": real, "synthetic": synthetic},
                                                        readers=("ann", "bob"), seed=2))
    scale = ["Certainly real", "Probably real", "Possibly real", "Possibly synthetic", "Probably synthetic",
             "Certainly synthetic"]

    def plan(position, seen):
        is_real = seen[0]
        score = (1 + position % 3) if is_real else (4 + position % 3)
        if position == 2:
            score = 7 - score  # one mistake per reader
        return scale[score - 1], str(score)

    report, readers = read_with_a_kill(browser, folder, [plan, plan], 6)
    for name, reader in zip(("ann", "bob"), readers):
        scores = [scale.index(label) + 1 for _, _, label in reader.given]
        synthetic_call = [not seen[0] for _, seen, _ in reader.given]
        correct = sum((s >= 4) == truth for s, truth in zip(scores, synthetic_call))
        positives = [s for s, t in zip(scores, synthetic_call) if t]
        negatives = [s for s, t in zip(scores, synthetic_call) if not t]
        auc = sum((x > y) + 0.5 * (x == y) for x in positives for y in negatives) / (len(positives) * len(negatives))
        figures = report["readers"][name]
        assert (figures["accuracy"]["k"], figures["accuracy"]["n"]) == (correct, 6) and correct == 5
        assert figures["auc"] == pytest.approx(auc)
        assert figures["sensitivity"]["k"] + figures["specificity"]["k"] == correct
        assert figures["median_time_ms"] > 0
    assert report["pooled"]["accuracy"]["k"] == 10 and report["pooled"]["accuracy"]["n"] == 12
    assert report["pooled"]["accuracy"]["ci95"][0] <= 10 / 12 <= report["pooled"]["accuracy"]["ci95"][1]
