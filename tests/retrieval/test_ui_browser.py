"""The web page in a REAL browser (headless Debian chromium via Selenium) against a REAL server with auth on.

`make test` installs chromium and chromium-driver when missing (scripts/ensure_chromium.sh); without them
these tests fail and say so. Every wait is explicit, with a deadline.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.imagegen import texture, to_rgb
from tests.retrieval.live_server import build_test_index, live_server, shared_index_root

TOKEN = "ui-browser-" + uuid.uuid4().hex[:8]
WAIT_S = 45
K = 12


@pytest.fixture(scope="module")
def base_url(tmp_path_factory, redis_url):
    index_dir = build_test_index(shared_index_root(tmp_path_factory))
    log = tmp_path_factory.mktemp("ui-browser") / "server.log"
    env = {"SJFT_API_TOKENS": TOKEN, "SJFT_REDIS_PREFIX": f"sjft-test-ui-{uuid.uuid4().hex[:12]}"}
    with live_server(index_dir, log, redis_url=redis_url, env=env) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.fail("chromium and chromium-driver are needed: run `bash scripts/ensure_chromium.sh`")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # script errors and CSP violations
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def job(base_url):
    """A job registered through the API, with two rounds whose metrics carry the source ids it uses."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        created = client.post("/v1/jobs", json={"name": "ui-test-birds", "config": {"k0": 4}})
        job = created.json()
        for rnd, acc in ((0, 0.4), (1, 0.55)):
            metrics = {"mean_class_acc": acc, "top1": acc + 0.05, "sources_in_use": 3}
            metrics["source_ids"] = [1, 2, 7]
            event = {"type": "round", "round": rnd, "metrics": metrics}
            r = client.post(f"/v1/jobs/{job['job_id']}/events", json=event)
            assert r.status_code == 200, r.text
    return job


def wait(driver, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S).until(condition)
    except TimeoutException:
        status = driver.execute_script("return document.getElementById('status').textContent")
        raise AssertionError(f"page never showed {what} within {WAIT_S} s; status line: {status!r}") from None


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


CARDS = (
    "return [...document.querySelectorAll('{sel} .card')]"
    ".map(c => [+c.dataset.sourceId, +c.querySelector('.distance').dataset.distance])"
)
THUMBS_LOADED = (
    "return [...document.querySelectorAll(arguments[0] + ' img.thumb')]"
    ".every(i => i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:'))"
)


def cards(driver, selector: str = "#results") -> list[tuple[int, float]]:
    return [(int(s), float(d)) for s, d in js(driver, CARDS.format(sel=selector))]


def script_errors(driver) -> list[str]:
    """Uncaught script errors and CSP violations in the browser console (refused HTTP calls are expected)."""
    entries = driver.get_log("browser")
    severe = [e["message"] for e in entries if e["level"] == "SEVERE"]
    return [m for m in severe if "Failed to load resource" not in m]


DROP = """
const [names, done] = [arguments[0], arguments[arguments.length - 1]];
const canvas = document.createElement('canvas');
canvas.width = canvas.height = 48;
const ctx = canvas.getContext('2d');
for (let x = 0; x < 48; x += 6) { ctx.fillStyle = x % 12 ? '#222' : '#ddd'; ctx.fillRect(x, 0, 6, 48); }
canvas.toBlob((blob) => {
  const transfer = new DataTransfer();
  names.forEach((name) => transfer.items.add(new File([blob], name, {type: 'image/png'})));
  const drop = document.getElementById('drop');
  drop.dispatchEvent(new DragEvent('dragover', {dataTransfer: transfer, bubbles: true, cancelable: true}));
  drop.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
  done(true);
}, 'image/png');
"""


def query_image(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    path = tmp_path / "my stripes.png"
    Image.fromarray(to_rgb(texture("stripes", 64, rng, 6.0), rng)).save(path)
    return path


def test_upload_browse_sources_and_jobs(browser, base_url, job, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(f"{base_url}/ui")
    # No token yet: the page itself loads, its /v1 calls say what is missing.
    info = browser.find_element(By.ID, "index-info")
    wait(browser, lambda d: "unauthorized" in info.text, "the 401 of /v1/index")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "token-save").click()
    wait(browser, lambda d: "48 sources" in info.text, "the index info")

    k_input = browser.find_element(By.ID, "k")
    k_input.clear()
    k_input.send_keys(str(K))
    browser.find_element(By.ID, "files").send_keys(str(query_image(tmp_path)))
    wait(browser, lambda d: len(cards(d)) == K, f"{K} neighbor cards")
    wait(browser, lambda d: js(d, THUMBS_LOADED, "#results"), "every thumbnail loaded")
    first = cards(browser)
    distances = [d for _, d in first]
    assert distances == sorted(distances) and len({s for s, _ in first}) == K
    assert browser.find_element(By.CSS_SELECTOR, ".result h2").text == "my stripes.png"
    assert all(js(browser, "return [...document.querySelectorAll('.class-name')].map(e => e.textContent)"))

    browser.find_element(By.ID, "more").click()  # the next window: ranks K+1..2K, continuing the ranking
    wait(browser, lambda d: len(cards(d)) == 2 * K, f"{2 * K} cards after 'more'")
    both = cards(browser)
    assert both[:K] == first and [d for _, d in both] == sorted(d for _, d in both)
    assert not {s for s, _ in both[K:]} & {s for s, _ in first}

    metric = browser.find_element(By.ID, "metric")
    metric.find_element(By.CSS_SELECTOR, "option[value=skl]").click()
    status = browser.find_element(By.ID, "status")
    wait(browser, lambda d: "skl" in status.text and len(cards(d)) == K, "skl results")
    skl = [d for _, d in cards(browser)]
    assert skl == sorted(skl) and skl != distances

    picked = cards(browser)[3][0]
    browser.find_elements(By.CSS_SELECTOR, "#results .card")[3].click()  # a source's own neighbors
    selector = f'.result[data-query-id="source {picked}"]'
    wait(browser, lambda d: len(cards(d, selector)) == K, f"the neighbors of source {picked}")
    own = cards(browser, selector)
    assert own[0][0] == picked and own[0][1] < 1e-6, own[:3]  # a source is its own nearest neighbor
    wait(browser, lambda d: js(d, THUMBS_LOADED, selector), "the source's thumbnails")

    browser.find_element(By.ID, "tab-jobs").click()
    job_sel = f'.job[data-job-id="{job["job_id"]}"]'
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, job_sel), "the registered job")
    article = browser.find_element(By.CSS_SELECTOR, job_sel)
    assert article.find_element(By.CSS_SELECTOR, ".job-name").text == "ui-test-birds"
    line = article.find_element(By.CSS_SELECTOR, "svg.chart polyline[data-series=mean_class_acc]")
    assert len(line.get_attribute("points").split()) == 2  # one point per reported round
    assert len(article.find_elements(By.CSS_SELECTOR, "table.rounds tr")) == 3
    job_thumbs = f"{job_sel} img.thumb"
    wait(
        browser,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, job_thumbs)) == 3 and js(d, THUMBS_LOADED, job_sel),
        "the job's source thumbnails",
    )

    assert TOKEN not in browser.current_url
    assert not script_errors(browser)
    shot = tmp_path / "ui.png"
    assert browser.save_screenshot(str(shot)) and Image.open(shot).size[0] > 0


def test_a_wrong_token_shows_the_services_error(browser, base_url):
    from selenium.webdriver.common.by import By

    browser.get(f"{base_url}/ui")
    token = browser.find_element(By.ID, "token")
    token.clear()
    token.send_keys("not-the-token")
    browser.find_element(By.ID, "token-save").click()
    info = browser.find_element(By.ID, "index-info")
    wait(browser, lambda d: "invalid bearer token" in info.text, "the 401 message")
    assert "error" in browser.find_element(By.ID, "index-info").get_attribute("class")


def test_dropping_several_images_gives_one_grid_each(browser, base_url):
    from selenium.webdriver.common.by import By

    browser.get(f"{base_url}/ui")  # the token is still in this tab's sessionStorage
    token = browser.find_element(By.ID, "token")
    token.clear()
    token.send_keys(TOKEN)
    browser.find_element(By.ID, "token-save").click()
    # Two dropped files with the same name: result ids must stay unique, so the second one is renamed.
    browser.execute_async_script(DROP, ["a.png", "a.png", "b.png"])
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result")) == 3, "three result grids")
    ids = [e.get_attribute("data-query-id") for e in browser.find_elements(By.CSS_SELECTOR, ".result")]
    assert ids == ["a.png", "2-a.png", "b.png"]
    grids = [cards(browser, f'.result[data-query-id="{i}"]') for i in ids]
    assert grids[0] == grids[1] and all(len(g) == K for g in grids)  # same bytes, same neighbors
    assert not script_errors(browser)
