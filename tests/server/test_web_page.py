"""The web page at ``/`` in a real headless chromium against the real server (``server.http_web``):
upload digit photos (file chooser, drag and drop, paste), read the predicted labels and compare them
with the API's answer for the same files, the bearer-token field, the status panel updating from
``/v1/status``; the status JSON's figures against the requests made; the page's headers. The page's
screenshot in the README is this test's: ``DDRNET_DOCS_IMAGES=1`` writes docs/images/web_page.png, and
``DDRNET_WEB_REPOSITORY=DIR DDRNET_WEB_MODEL=NAME`` serve another model than the untrained test one
(the README's shows the trained digits demo of ``ddrnet quickstart``)."""

from __future__ import annotations

import base64
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.support import browser
from tests.support import server_fixtures as sf

TOKEN = "page-token"
MODEL = os.environ.get("DDRNET_WEB_MODEL", "slim")
DOCS_IMAGE = sf.REPO_ROOT / "docs" / "images" / "web_page.png"


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("web") / "repo"
    source = os.environ.get("DDRNET_WEB_REPOSITORY") or request.getfixturevalue("slim_repository")
    shutil.copytree(source, repo)
    proc = sf.ServerProcess(
        repo,
        repo.parent / "server.log",
        "--instances",
        "1",
        "--threads-per-instance",
        "1",
        "--auth-token",
        TOKEN,
    ).start()
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def digit_photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three handwritten digits of scikit-learn's set drawn as the digits demo draws them (dark ink on
    white, 96x96 PNG)."""
    from sklearn.datasets import load_digits

    from training.digits import digit_to_image

    digits = load_digits()
    out = tmp_path_factory.mktemp("digits")
    paths = []
    for index in (1, 7, 4):
        path = out / f"digit_{digits.target[index]}.png"
        digit_to_image(digits.images[index], 96).save(path)
        paths.append(path)
    return paths


def api_top_label(server, path: Path) -> str:
    response = httpx.post(
        f"{server.http_url}/v1/models/{MODEL}/classify",
        files={"file": path.read_bytes()},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()["results"][0]["predictions"][0]["label"]


def test_status_json_follows_the_metrics(server, digit_photos) -> None:
    status = httpx.get(f"{server.http_url}/v1/status", timeout=10).json()
    assert status["server"]["ready"] and status["server"]["auth_required"]
    (served,) = status["models"]
    assert (served["name"], served["runtime"], served["precision"]) == (MODEL, "onnxruntime", "fp32")
    assert served["versions"] == [served["version"]] and served["ready"]
    for _ in range(4):
        api_top_label(server, digit_photos[0])
    after = httpx.get(f"{server.http_url}/v1/status", timeout=10).json()["models"][0]
    assert after["requests_per_s"] > 0 and after["images_per_s"] > 0
    assert 0 < after["p50_ms"] <= after["p99_ms"]
    assert after["queue_depth"] == 0 and after["inflight"] == 0


def test_page_headers_and_files(server) -> None:
    page = httpx.get(server.http_url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere: works offline
    assert (
        httpx.get(server.http_url + "/ui/app.js", timeout=10)
        .headers["content-type"]
        .startswith("text/javascript")
    )
    assert httpx.get(server.http_url + "/ui/nothing.js", timeout=10).status_code == 404


def _wait(driver, script: str, timeout_s: float = 60.0):
    """Poll a JavaScript expression until it is truthy; its value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(
        f"timed out waiting for: {script}\n{driver.execute_script('return document.body.innerText')}"
    )


RESULTS = "Array.from(document.querySelectorAll('#results .result'))"
DONE = f"{RESULTS}.filter(r => r.dataset.status !== 'pending')"


def test_classify_in_a_real_browser(server, digit_photos, tmp_path) -> None:
    why = browser.missing()
    if why:
        pytest.skip(f"no headless browser: {why}")
    from selenium.webdriver.common.by import By

    expected = {path.name: api_top_label(server, path) for path in digit_photos}
    with browser.chromium() as driver:
        driver.get(server.http_url + "/")
        _wait(driver, "document.querySelector('#server-state').dataset.state === 'ready'")
        _wait(driver, f"document.querySelector('#model').value === '{MODEL}'")
        row = driver.find_element(By.CSS_SELECTOR, f"#models tr[data-model='{MODEL}']")
        assert "onnxruntime" in row.text and "yes" in row.text

        # no token: the answer says what is missing
        driver.find_element(By.ID, "files").send_keys(str(digit_photos[0]))
        _wait(driver, f"{DONE}.length === 1")
        first = driver.find_element(By.CSS_SELECTOR, "#results .result")
        assert first.get_attribute("data-status") == "error" and "bearer token" in first.text

        # the token, then three photos chosen at once: each labelled as the API labels it
        token = driver.find_element(By.ID, "token")
        token.send_keys(TOKEN)
        driver.execute_script("document.querySelector('#token').dispatchEvent(new Event('change'))")
        driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in digit_photos))
        _wait(driver, f"{DONE}.length === 4")
        for item in driver.find_elements(By.CSS_SELECTOR, "#results .result[data-status='done']"):
            name = item.find_element(By.CSS_SELECTOR, ".meta").text.split(" · ")[0]
            top = item.find_element(By.CSS_SELECTOR, ".bar.top .label").text
            assert top == expected[name], (name, top, expected)
            assert len(item.find_elements(By.CSS_SELECTOR, ".bar")) == 5  # top-5 bars
            assert f"{MODEL} v" in item.text and "latency" in item.text and " ms" in item.text

        # drag and drop, and paste, of the same photo: a DataTransfer made in the page
        photo = digit_photos[1]
        driver.execute_script(
            """
            const [name, b64] = arguments;
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const file = new File([bytes], name, {type: 'image/png'});
            const dt = new DataTransfer(); dt.items.add(file);
            const target = document.querySelector('#drop');
            target.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
        """,
            photo.name,
            base64.b64encode(photo.read_bytes()).decode(),
        )
        _wait(driver, f"{DONE}.length === 5")
        driver.execute_script(
            """
            const [name, b64] = arguments;
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer(); dt.items.add(new File([bytes], name, {type: 'image/png'}));
            document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true}));
        """,
            photo.name,
            base64.b64encode(photo.read_bytes()).decode(),
        )
        _wait(driver, f"{DONE}.length === 6")
        newest = driver.find_elements(By.CSS_SELECTOR, "#results .result")[:2]
        for item in newest:
            assert item.get_attribute("data-status") == "done"
            assert item.find_element(By.CSS_SELECTOR, ".bar.top .label").text == expected[photo.name]

        # the status panel updates from /v1/status: the requests just made show as throughput
        rps = _wait(
            driver,
            f"(() => {{ const c = document.querySelector(\"#models tr[data-model='{MODEL}'] .rps\");"
            " return c && parseFloat(c.textContent) > 0 ? c.textContent : null; })()",
            20,
        )
        assert float(rps) > 0
        p50 = driver.find_element(By.CSS_SELECTOR, f"#models tr[data-model='{MODEL}'] .p50").text
        assert float(p50) > 0
        shot = tmp_path / "web_page.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("DDRNET_DOCS_IMAGES") == "1":
            DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, DOCS_IMAGE)


def test_no_web_ui_leaves_the_page_out(tmp_path) -> None:
    """``--no-web-ui``: no page, no page files; ``/v1/status`` stays (an operator's endpoint)."""
    import asyncio

    from server.http_api import create_app

    sf.make_fake_version(tmp_path, "fake", 1)

    async def main() -> None:
        async with sf.started_core(sf.settings_for(tmp_path, web_ui=False)) as core:
            transport = httpx.ASGITransport(app=create_app(core))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                assert (await client.get("/")).status_code == 404
                assert (await client.get("/ui/app.js")).status_code == 404
                status = await client.get("/v1/status")
                assert status.status_code == 200 and status.json()["models"][0]["name"] == "fake"

    asyncio.run(asyncio.wait_for(main(), 60))


def test_the_page_over_https(slim_repository: Path, digit_photos, tmp_path) -> None:
    """Served with --tls-cert, the page loads over HTTPS and classifies (its requests are same-origin)."""
    why = browser.missing()
    if why:
        pytest.skip(f"no headless browser: {why}")
    from tests.support.tls import self_signed

    pem = self_signed(tmp_path)
    if pem is None:
        pytest.skip("openssl is not installed: no certificate for the HTTPS server")
    from selenium.webdriver.common.by import By

    tls = ["--tls-cert", str(pem[0]), "--tls-key", str(pem[1])]
    proc = sf.ServerProcess(slim_repository, tmp_path / "server.log", "--instances", "1",
                            "--threads-per-instance", "1", *tls)
    try:
        proc.start()
        url = f"https://127.0.0.1:{proc.http_port}/"
        with browser.chromium("--ignore-certificate-errors") as driver:
            driver.get(url)
            _wait(driver, "document.querySelector('#server-state').dataset.state === 'ready'")
            _wait(driver, "document.querySelector('#model').value === 'slim'")
            driver.find_element(By.ID, "files").send_keys(str(digit_photos[0]))
            _wait(driver, f"{DONE}.length === 1")
            item = driver.find_element(By.CSS_SELECTOR, "#results .result")
            assert item.get_attribute("data-status") == "done", item.text
            assert driver.execute_script("return location.protocol") == "https:"
    finally:
        proc.kill()
