"""The playground page end to end in headless Chromium (Playwright driving Debian's chromium):
it lists the deployments, builds each endpoint's form, shows a heat map, digits, colour images
and text from the real apps, and shows the server's error message for a bad request. The page is open
while the API behind it needs a key."""

import base64
import io
import shutil

import numpy as np
import pytest
from deployed import local_server, served
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def apps(request, serve_url, tmp_path_factory):
    names, _ = served(request, tmp_path_factory)
    return names


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not shutil.which(CHROMIUM):
        pytest.fail(f"no chromium at {CHROMIUM}: `apt-get install chromium` (make install-test does it)")
    with sync_playwright() as p:
        # Playwright's own browser download is never used: the system chromium, no sandbox as root.
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def run(page, expect: str) -> None:
    page.click("#run")
    page.wait_for_selector("body[data-result]", state="attached", timeout=60_000)
    assert page.get_attribute("body", "data-result") == expect, page.inner_text("#error")


def choose(page, prefix: str, endpoint: str) -> None:
    page.select_option("#app", prefix)
    page.wait_for_selector(f"#endpoint option[value='{endpoint}']", state="attached")
    page.select_option("#endpoint", endpoint)
    page.wait_for_selector("#form input, #form textarea", state="attached")


@pytest.mark.ray
def test_playground_queries_the_deployments_and_shows_errors(apps, serve_url, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    page.goto(f"{serve_url}/{apps['heat']}/playground")
    page.wait_for_selector("#field-n")
    listed = page.eval_on_selector_all("#app option", "options => options.map(o => o.value)")
    assert {f"/{name}" for name in apps.values()} <= set(listed)
    assert page.input_value("#endpoint") == "/solve" and page.input_value("#field-format") == "png"

    # The heat map: a rendered picture, not an empty box.
    for field, value in {"n": "24", "dt": "0.01", "t_end": "0.05"}.items():
        page.fill(f"#field-{field}", value)
    run(page, "ok")
    img = page.locator("#images img")
    assert img.count() == 1 and page.evaluate("document.querySelector('#images img').naturalWidth") >= 300
    page.screenshot(path=str(tmp_path / "playground.png"))
    shot = np.asarray(Image.open(io.BytesIO(img.screenshot())).convert("RGB"))
    colours = len(np.unique(shot.reshape(-1, 3), axis=0))
    assert shot.shape[0] >= 300 and colours > 50, f"{shot.shape}, {colours} colours: not a heat map"
    assert (shot.mean(axis=2) < 60).mean() > 0.05  # inferno's dark end: the cold region is drawn

    # A failing request shows the server's message on the page.
    choose(page, f"/{apps['vae']}", "/sample")
    page.fill("#field-n", "0")
    run(page, "error")
    message = page.inner_text("#error")
    assert message.startswith("422: n:") and "greater than or equal to 1" in message
    page.fill("#field-n", "4")
    run(page, "ok")
    assert page.locator("#images img").count() == 4
    assert page.inner_text("#error") == ""

    # Required fields start with examples: digits for style transfer, a prompt's text for charlm.
    choose(page, f"/{apps['cvae']}", "/style_transfer")
    run(page, "ok")
    assert page.locator("#images img").count() == 1
    choose(page, f"/{apps['charlm']}", "/generate")
    page.fill("#field-n", "40")
    page.fill("#field-seed", "1")
    run(page, "ok")
    assert len(page.inner_text("#text")) >= 40

    # A colour model: its size and classes shown, its samples in colour at its size, its example
    # images redrawn in its shape (the loop below runs its other endpoints on them).
    choose(page, f"/{apps['rgb-cvae']}", "/sample")
    assert page.inner_text("#model") == "images 64x64 RGB; classes: red, green, blue"
    page.fill("#field-label", '"green"')
    page.fill("#field-digit", "")
    run(page, "ok")
    sizes = page.eval_on_selector_all("#images img", "images => images.map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes and all(size == [64, 64] for size in sizes)
    shown = page.eval_on_selector("#images img", "image => image.src").split(",", 1)[1]
    assert Image.open(io.BytesIO(base64.b64decode(shown))).mode == "RGB"  # the colour PNG, as it came

    # Every other endpoint of every app answers its form as the page builds it (defaults, examples).
    done = {(apps["heat"], "/solve"), (apps["vae"], "/sample"), (apps["cvae"], "/style_transfer"),
            (apps["charlm"], "/generate"), (apps["rgb-cvae"], "/sample")}
    for name in apps.values():
        page.select_option("#app", f"/{name}")
        page.wait_for_selector("#endpoint option", state="attached")
        for endpoint in page.eval_on_selector_all("#endpoint option", "options => options.map(o => o.value)"):
            if (name, endpoint) in done:
                continue
            page.select_option("#endpoint", endpoint)
            run(page, "ok")
            assert page.locator("#images img").count() or page.text_content("#json"), (name, endpoint)
    page.close()


def test_playground_page_is_open_while_the_api_needs_a_key(monkeypatch, browser):
    """genray's own app (make_api: Guard, JSON errors, the playground) behind uvicorn, keyed."""
    import requests
    from pydantic import Field

    from genray.deploy.common import StrictModel, make_api

    monkeypatch.setenv("GENRAY_API_KEY", "s3cret")
    api = make_api("keyed")

    class EchoRequest(StrictModel):
        word: str = "hello"
        times: int = Field(2, ge=1, le=10)

    @api.get("/")
    def info() -> dict:
        return {"endpoints": ["/echo"]}

    @api.post("/echo")
    def echo(req: EchoRequest) -> dict:
        return {"text": " ".join([req.word] * req.times)}

    with local_server(api) as url:
        raw = requests.get(url + "/playground", timeout=10)
        assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/html")
        assert "/*EXAMPLES*/" not in raw.text and '"labels": [3]' in raw.text  # examples filled in
        assert requests.post(url + "/echo", json={}, timeout=10).status_code == 401
        openapi = requests.get(url + "/openapi.json", headers={"X-API-Key": "s3cret"}, timeout=10).json()
        assert "/playground" not in openapi["paths"]  # the fuzzer and the page see the API only

        page = browser.new_page()
        page.goto(url + "/playground")  # no /-/routes here (not Serve): the page offers its own app
        page.wait_for_selector("#error:has-text('API key')")
        assert "401" in page.inner_text("#error")  # the API refuses the page until it has the key
        page.fill("#key", "s3cret")
        page.dispatch_event("#key", "change")
        page.wait_for_selector("#field-word")
        page.fill("#field-times", "3")
        run(page, "ok")
        assert page.inner_text("#text") == "hello hello hello"
        page.close()
