"""The web page at GET /, in a real headless browser against the real server on the demo model
(and on a model of its own name and classes, for the model line and the class filter).

Debian's Chromium is driven through chromium-driver with Selenium (`.ci/run` installs both;
selenium is in the test extra). Without them these tests fail, saying what to install:
they are part of the suite, not optional.

A generated scene is uploaded through the page's file input, exactly as a user would; the
page posts it to /invocations twice (picture and table), and the table must list every
drawn shape. Screenshots go to test-artifacts/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import collections
import re
import shutil
import tempfile

import numpy as np
import pytest

from demo.export_shapes import MODEL_NAME
from demo.shapes import CLASS_NAMES, EVAL_SEED_START, generate_scene
from engine.image_io import decode_image
from engine.render import PALETTE
from harness.server import REPO, http_call, running_server
from server_fixtures import encode_pil
from helpers import SMALL_CLASSES

ARTIFACTS = REPO / "test-artifacts"
SEED = EVAL_SEED_START + 10  # held out from training, like every seed below TRAIN_SEED_START
SAMPLE_SEED = 2_000_019  # server/static/sample.jpg was drawn from this seed
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--window-size=1280,1000"]
WAIT_S = 60
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def page_server(demo_model_dir, tmp_path_factory):
    yield from running_server(demo_model_dir, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def small_server(small_model_dir, tmp_path_factory):
    """A model other than the demo: its own name ("small-test") and classes (SMALL_CLASSES)."""
    yield from running_server(small_model_dir, tmp_path_factory.mktemp("serve-small"))


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install -e '.[test]'")
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("Chromium and its driver are needed for the web page test: "
                    "apt-get install -y --no-install-recommends chromium chromium-driver (as .ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(browser, server) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server.url}/")
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_element("id", "model-status").get_attribute("data-state") == "ready")


def wait_for_run(browser, expect: str) -> None:
    """Until the page is idle and its status line contains `expect`, or an error shows.

    One script checks all three at once: separate calls could see "idle" before a run
    starts and its status line after."""
    from selenium.webdriver.support.ui import WebDriverWait

    settled = """
        const idle = !document.body.classList.contains('busy');
        const done = document.getElementById('status').textContent.includes(arguments[0]);
        return idle && (done || !document.getElementById('error').hidden);"""
    WebDriverWait(browser, WAIT_S, poll_frequency=0.1).until(lambda d: d.execute_script(settled, expect))


def table(browser) -> list[dict]:
    rows = []
    for tr in browser.find_elements("css selector", "#detections tbody tr"):
        cells = tr.find_elements("css selector", "th, td")
        if len(cells) == 4:
            rows.append({"name": cells[1].text.strip(), "score": float(cells[2].text.rstrip("%")) / 100,
                         "box": [int(v) for v in re.findall(r"-?\d+", cells[3].text)]})
    return rows


def save_screenshot(browser, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / name))


def test_upload_shows_the_segmented_scene_and_a_table_of_the_drawn_shapes(browser, page_server, tmp_path):
    scene = generate_scene(SEED, width=640, height=480)
    path = tmp_path / f"scene-{SEED}.png"
    path.write_bytes(encode_pil(scene.image, "PNG"))
    open_page(browser, page_server)
    assert MODEL_NAME in browser.find_element("id", "model-status").text

    browser.find_element("id", "file").send_keys(str(path))  # what choosing a file does
    wait_for_run(browser, "object")
    save_screenshot(browser, "web_page.png")
    assert not browser.find_element("id", "error").is_displayed(), browser.find_element("id", "error").text
    rows = table(browser)
    missing = collections.Counter(scene.labels) - collections.Counter(r["name"] for r in rows)
    assert not missing, f"drawn {scene.labels}, the table lists {[r['name'] for r in rows]}"
    assert all(r["score"] >= 0.5 for r in rows) and all(len(r["box"]) == 4 for r in rows)
    assert f"{len(rows)} object" in browser.find_element("id", "status").text
    # The picture is the server's segmented JPEG, at the scene's size.
    image = browser.find_element("id", "segmented")
    assert image.get_attribute("src").startswith("blob:")
    assert browser.execute_script("return arguments[0].naturalWidth", image) == 640
    assert browser.execute_script("return arguments[0].complete", image)

    # A higher threshold runs the image again (keyboard: End moves the slider to its maximum).
    from selenium.webdriver.common.keys import Keys

    browser.find_element("id", "threshold").send_keys(Keys.END)
    assert browser.find_element("id", "threshold-value").text == "0.95"
    wait_for_run(browser, "\u2265 0.95")
    strict = table(browser)
    assert len(strict) <= len(rows) and all(r["score"] >= 0.95 for r in strict)
    browser_errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not browser_errors, browser_errors


def test_server_errors_are_shown_legibly(browser, page_server, tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_text("these are notes, not a picture")
    open_page(browser, page_server)
    browser.find_element("id", "file").send_keys(str(bogus))
    wait_for_run(browser, "object")
    error = browser.find_element("id", "error")
    save_screenshot(browser, "web_page_error.png")
    assert error.is_displayed() and error.get_attribute("role") == "alert"
    assert error.text.startswith("Error 400:") and "not a JPEG or PNG" in error.text, error.text
    assert not browser.find_element("id", "result").is_displayed()


def test_sample_scene_button(browser, page_server):
    scene = generate_scene(SAMPLE_SEED, width=640, height=480)
    sample = decode_image((REPO / "server" / "static" / "sample.jpg").read_bytes())
    assert np.abs(sample.astype(int) - scene.image.astype(int)).mean() < 3  # it is that scene
    open_page(browser, page_server)
    browser.find_element("id", "sample").click()
    wait_for_run(browser, "sample.jpg")
    assert not browser.find_element("id", "error").is_displayed()
    names = collections.Counter(r["name"] for r in table(browser))
    assert not collections.Counter(scene.labels) - names and set(names) <= set(CLASS_NAMES[1:])


def test_keyboard_order_and_labels(browser, page_server):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    open_page(browser, page_server)
    focused = []
    for _ in range(3):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        focused.append(browser.execute_script("return document.activeElement.id"))
    assert focused == ["file", "sample", "threshold"]
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('input')].filter(i => i.labels.length === 0).map(i => i.id)")
    assert unlabelled == []


def test_table_swatches_use_the_renderers_colours(browser, page_server):
    open_page(browser, page_server)
    colours = browser.execute_script(
        "return Array.from({length: 2 * arguments[0]}, (_, i) => window.maskrcnnPage.instanceColour(i))",
        len(PALETTE))
    assert colours == np.concatenate([PALETTE, PALETTE]).tolist()


def test_the_demo_model_is_announced_with_what_it_knows(browser, page_server):
    open_page(browser, page_server)
    notice = browser.find_element("id", "demo-notice")
    save_screenshot(browser, "web_page_demo_notice.png")
    assert notice.is_displayed() and notice.get_attribute("role") == "note"
    assert "circle, square and triangle" in notice.text, notice.text
    assert "./serve.sh --coco" in notice.text, notice.text


def test_no_demo_notice_for_another_model(browser, small_server):
    open_page(browser, small_server)
    assert not browser.find_element("id", "demo-notice").is_displayed()


# Wraps the page's fetch to keep the custom attributes of each /invocations request it sends.
RECORD_ATTRIBUTES = """
    window.sentAttributes = [];
    const originalFetch = window.fetch;
    window.fetch = (url, init) => {
      if (url === '/invocations') {
        window.sentAttributes.push(JSON.parse(init.headers['X-Amzn-SageMaker-Custom-Attributes']));
      }
      return originalFetch(url, init);
    };"""


def test_class_filter_lists_the_served_models_classes_and_restricts_the_results(browser, small_server, tmp_path):
    from selenium.webdriver.common.keys import Keys

    classes = SMALL_CLASSES[1:]  # what the model knows, without its background
    ping = http_call(f"{small_server.url}/ping", "GET").json()
    assert ping["model"] == "small-test" and ping["classes"] == classes
    scene = generate_scene(SEED, width=640, height=480)
    path = tmp_path / "scene.png"
    path.write_bytes(encode_pil(scene.image, "PNG"))

    browser.get_log("browser")  # drained: earlier tests' pages log errors on purpose
    open_page(browser, small_server)
    assert "small-test" in browser.find_element("id", "model-status").text
    boxes = browser.find_elements("css selector", "#class-list input[type=checkbox]")
    assert [box.get_attribute("value") for box in boxes] == classes
    assert browser.execute_script(  # each box is labelled with its class, in a named group
        "return arguments[0].map(b => b.labels[0].textContent.trim())", boxes) == classes
    assert browser.find_element("css selector", "#class-filter legend").text == "Classes"
    assert all(box.is_selected() for box in boxes)

    browser.execute_script(RECORD_ATTRIBUTES)
    browser.find_element("id", "file").send_keys(str(path))
    wait_for_run(browser, "object")
    assert not browser.find_element("id", "error").is_displayed(), browser.find_element("id", "error").text
    found = collections.Counter(r["name"] for r in table(browser))
    # The random-weight model finds several of its classes in this scene; all ticked: no filter.
    assert len(found) >= 2 and set(found) <= set(classes), found
    assert all("classes" not in sent for sent in browser.execute_script("return window.sentAttributes"))

    # Untick the class found most, from the keyboard: the image runs again with the others only.
    dropped = found.most_common(1)[0][0]
    kept = [c for c in classes if c != dropped]
    browser.execute_script("window.sentAttributes = []")
    boxes[classes.index(dropped)].send_keys(Keys.SPACE)
    wait_for_run(browser, "3 of 4 classes")
    save_screenshot(browser, "web_page_class_filter.png")
    assert not browser.find_element("id", "error").is_displayed(), browser.find_element("id", "error").text
    sent = browser.execute_script("return window.sentAttributes")
    assert len(sent) == 2 and all(s["classes"] == kept for s in sent)  # the picture's and the table's
    filtered = {r["name"] for r in table(browser)}
    # only the kept classes, and every kept class found before is still found
    assert set(found) - {dropped} <= filtered <= set(kept), (found, filtered)

    # None: nothing to ask for, so nothing is sent; All: back to no filter.
    browser.execute_script("window.sentAttributes = []")
    browser.find_element("id", "classes-none").click()
    wait_for_run(browser, "No class is ticked")
    assert browser.execute_script("return window.sentAttributes") == []
    browser.find_element("id", "classes-all").click()
    wait_for_run(browser, "object")
    assert dropped in {r["name"] for r in table(browser)}
    assert all("classes" not in s for s in browser.execute_script("return window.sentAttributes"))
    browser_errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not browser_errors, browser_errors
