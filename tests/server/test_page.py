"""The browser page, end to end: headless Chromium (Debian's) driven by Playwright against a
real server on 127.0.0.1. Upload, pick two tasks, see both maps and the router heatmap; a bad
upload shows the API's words."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.server.conftest import image_bytes, random_image, start_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SAMPLE_SIZE = (48, 64)  # (height, width): not the model's size, so resizing is exercised


def _require_chromium() -> None:
    if shutil.which(CHROMIUM) or Path(CHROMIUM).exists():
        return
    message = f"{CHROMIUM} is missing: apt-get install chromium"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def page_server(model_dir, logs, tmp_path_factory):
    samples = tmp_path_factory.mktemp("samples")
    (samples / "scene.png").write_bytes(image_bytes(random_image(3, *SAMPLE_SIZE)))
    process = start_server(model_dir, logs, "--samples-dir", str(samples))
    yield process, samples
    process.stop()


@pytest.fixture(scope="module")
def browser():
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        yield browser
        browser.close()


def _canvas_stats(page, selector: str) -> list[dict]:
    """Size and count of non-blank pixels of every canvas matching the selector."""
    return page.eval_on_selector_all(
        selector,
        """canvases => canvases.map(c => {
            const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let painted = 0, distinct = new Set();
            for (let i = 0; i < data.length; i += 4) {
                if (data[i + 3] > 0) painted++;
                const rgb = data[i] << 16 | data[i + 1] << 8 | data[i + 2];
                if (distinct.size < 64) distinct.add(rgb);
            }
            return {width: c.width, height: c.height, painted, colours: distinct.size,
                    task: c.closest('figure').dataset.task};
        })""",
    )


def test_upload_two_tasks_shows_maps_and_routers(browser, page_server, tmp_path):
    server, samples = page_server
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector('input[name="task"][value="semseg"]')
    page.set_input_files("#file-input", str(samples / "scene.png"))
    for task in ("semseg", "normals"):
        page.check(f'input[name="task"][value="{task}"]')
    page.uncheck('input[name="task"][value="semseg"]')
    page.check('input[name="task"][value="semseg"]')
    page.click("#run")
    page.wait_for_selector(".router-card canvas", timeout=20_000)

    maps = _canvas_stats(page, ".map-card canvas")
    assert sorted(m["task"] for m in maps) == ["normals", "semseg"]
    height, width = SAMPLE_SIZE
    for stats in maps:  # maps come back at the uploaded image's size, fully painted
        assert (stats["height"], stats["width"]) == (height, width)
        assert stats["painted"] == height * width
        assert stats["colours"] > 1
    routers = _canvas_stats(page, ".router-card canvas")
    assert sorted(r["task"] for r in routers) == ["normals", "semseg"]
    assert all(r["painted"] > 0 and r["width"] > 0 for r in routers)
    assert page.locator("#error").is_hidden()
    assert "CPUExecutionProvider" in page.inner_text("#timing")
    assert page.locator(".legend span").count() >= 1  # semseg's class legend

    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.close()


def test_bad_upload_shows_the_error_in_words(browser, page_server, tmp_path):
    server, _ = page_server
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not a picture at all")
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector('input[name="task"][value="semseg"]')
    page.set_input_files("#file-input", str(bad))
    page.click("#run")
    page.wait_for_selector("#error:not([hidden])", timeout=20_000)
    text = page.inner_text("#error")
    assert "HTTP 400" in text and "image" in text.lower()
    page.close()


def test_samples_are_listed_and_served_but_nothing_else(page_server):
    server, samples = page_server
    with server.client() as client:
        listing = client.get("/v1/samples").json()
        assert listing == {"samples": ["samples/scene.png"]}
        body = client.get("/samples/scene.png").content
        assert body == (samples / "scene.png").read_bytes()
        assert client.get("/samples/..%2Fsettings.py").status_code == 404
        missing = client.get("/samples/nope.png")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_sample_click_loads_the_image(browser, page_server):
    server, _ = page_server
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("#samples img")
    page.click("#samples img")
    page.wait_for_selector("#input-card:not([hidden])")
    size = page.eval_on_selector("#input-canvas", "c => [c.height, c.width]")
    assert tuple(size) == SAMPLE_SIZE
    assert np.prod(size) > 0
    page.close()


def test_a_camera_photo_comes_back_at_the_size_the_page_shows(browser, page_server, tmp_path):
    """The page asks for maps no larger than it draws them (max_side = 320 CSS px at the
    device's pixel ratio), and says when the model learned from synthetic scenes only."""
    server, _ = page_server
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(image_bytes(random_image(5, 1200, 1600), "JPEG", quality=90))
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector('input[name="task"][value="semseg"]')
    with server.client() as client:
        dataset = client.get("/v1/models").json()["models"][0]["dataset"]
    assert dataset == "synthetic"  # the tiny test model, like the demo
    assert page.locator("#model-note").is_visible()
    assert "synthetic" in page.inner_text("#model-note")
    page.set_input_files("#file-input", str(photo))
    page.check('input[name="task"][value="normals"]')
    with page.expect_response(lambda r: "/predict" in r.url) as answered:
        page.click("#run")
    assert "max_side=320" in answered.value.url
    page.wait_for_selector(".router-card canvas", timeout=20_000)
    for stats in _canvas_stats(page, ".map-card canvas"):
        assert (stats["height"], stats["width"]) == (240, 320)
        assert stats["painted"] == 240 * 320
    size = page.eval_on_selector("#input-canvas", "c => [c.height, c.width]")
    assert tuple(size) == (240, 320)
    page.close()


def test_the_model_picker_offers_every_served_version_and_predicts_with_the_one_picked(
    browser, model_dir, logs, tmp_path
):
    """A repository of two models (two versions of one): the picker lists the three, starts on
    the default model's highest version, shows the tasks of the one picked, and the answer
    comes from it (the timing line names it)."""
    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(random_image(6)))
    with _repository_page(browser, model_dir, logs, tmp_path) as page:
        options = page.eval_on_selector_all("#model option", "os => os.map(o => o.textContent)")
        assert options == ["ase-tiny · version 1", "fake · version 1", "fake · version 2"]
        assert page.eval_on_selector("#model", "s => s.selectedOptions[0].textContent") == (
            "fake · version 2"
        )
        tasks = page.eval_on_selector_all('input[name="task"]', "es => es.map(e => e.value)")
        assert tasks == ["saliency", "edges"]
        page.select_option("#model", label="fake · version 1")
        page.set_input_files("#file-input", str(photo))
        with page.expect_response(lambda r: "/predict" in r.url) as answered:
            page.click("#run")
        assert "model=fake&version=1" in answered.value.url
        page.wait_for_selector(".map-card canvas")
        assert "fake version 1" in page.inner_text("#timing")
        page.select_option("#model", label="ase-tiny · version 1")
        tasks = page.eval_on_selector_all('input[name="task"]', "es => es.map(e => e.value)")
        assert tasks == ["semseg", "parts", "saliency", "normals", "edges"]


# The page's first, keyless load of the model list answered (401) only after a later, keyed one:
# held back until that one is done. Returns what the page shows afterwards.
STALE_KEYLESS_LOAD = """async () => {
  const realFetch = window.fetch;
  let release;
  const held = new Promise((resolve) => { release = resolve; });
  let first = true;
  window.fetch = async (url, options) => {
    if (String(url).includes("v1/models") && first) {
      first = false;
      const answer = await realFetch(url, {});
      await held;
      return answer;
    }
    return realFetch(url, options);
  };
  const stale = loadModels();
  await loadModels();
  release();
  await stale;
  window.fetch = realFetch;
  return {
    errorShown: !document.getElementById("error").hidden,
    picked: document.getElementById("model").selectedOptions[0].textContent,
  };
}"""


def test_a_reload_of_the_model_list_keeps_the_pick_and_drops_a_stale_answer(
    browser, model_dir, logs, tmp_path
):
    """Entering the API key reloads the list while the page's own load may still be out: the
    user's pick survives a reload, and an older answer arriving last changes nothing."""
    with _repository_page(browser, model_dir, logs, tmp_path) as page:
        page.select_option("#model", label="fake · version 1")
        page.evaluate("() => loadModels()")  # resolves once the list is rebuilt
        picked = page.eval_on_selector("#model", "s => s.selectedOptions[0].textContent")
        assert picked == "fake · version 1"
        shown = page.evaluate(STALE_KEYLESS_LOAD)
        assert shown == {"errorShown": False, "picked": "fake · version 1"}
        assert "fake 1" in page.inner_text("#model-info")


@contextmanager
def _repository_page(browser, model_dir, logs, tmp_path):
    """The page on a repository of ase-tiny 1 and fake 1 and 2 (default fake), key entered and
    the keyed model list shown."""
    from tests.server.fake_model import write_fake_model_dir
    from tests.server.test_repository_server import start

    root = tmp_path / "repo"
    (root / "ase-tiny").mkdir(parents=True)
    (root / "ase-tiny" / "1").symlink_to(model_dir)
    write_fake_model_dir(root / "fake" / "1", tasks=("saliency", "edges"), seed=1)
    write_fake_model_dir(root / "fake" / "2", tasks=("saliency", "edges"), seed=2)
    server = start(root, logs, "--model-version-policy", "all", "--default-model", "fake")
    page = browser.new_page()
    try:
        page.goto(server.url + "/")
        page.fill("#api-key", "repository-key")  # start() sets this key
        with page.expect_response(lambda r: "v1/models" in r.url and r.ok):
            page.dispatch_event("#api-key", "change")
        page.wait_for_selector('input[name="task"][value="saliency"]')
        yield page
    finally:
        page.close()
        server.stop()
