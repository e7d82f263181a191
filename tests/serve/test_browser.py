"""The search page in a real browser: headless Chromium loads it from a uvicorn server on a
loopback port, a query is typed and submitted, and the result grid is checked against numpy's
brute-force ranking; then an image is chosen with the upload button."""

from __future__ import annotations

import pytest

from headless_chromium import Chromium
from mmcl.serve.app import create_app
from mmcl.serve.background import serve_in_background
from served_index import shared_served_index

GRID = """JSON.stringify([...document.querySelectorAll('#results figure.result')].map((f) => ({
  path: f.dataset.path,
  shown: f.querySelector('.score').textContent,
  loaded: f.querySelector('img').complete && f.querySelector('img').naturalWidth,
})))"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return shared_served_index(tmp_path_factory)  # read only: built once a session


def grid(browser: Chromium, first_path: str | None = None) -> list[dict]:
    """The result grid once it is filled (with `first_path` first) and every image decoded."""
    import json

    first = f"&& r[0].path === {json.dumps(first_path)}" if first_path else ""
    browser.wait_until(
        f"(r => r.length && r.every(x => x.loaded) {first})({GRID.replace('JSON.stringify', '')})"
    )
    return json.loads(browser.evaluate(GRID))


def test_typing_a_query_fills_the_grid_in_numpy_order_with_loaded_thumbnails(served):
    with serve_in_background(create_app(served.folder, served.model)) as url, Chromium() as browser:
        browser.open(url + "/")
        browser.wait_until("document.getElementById('about').textContent.startsWith('6 images')")
        browser.evaluate("document.getElementById('q').focus()")
        browser.type("a red square")
        browser.press_enter()
        results = grid(browser)
        paths, scores = served.text_ranking("a red square")
        assert [r["path"] for r in results] == paths  # all 6: the page asks for 24
        assert [r["shown"] for r in results] == [f"{s:.3f}" for s in scores]
        assert all(r["loaded"] == 32 for r in results)  # each thumbnail decoded: 32 px wide
        status = browser.evaluate("document.getElementById('status').textContent")
        assert status == "6 results for “a red square”"
        assert browser.evaluate("location.search") == "?q=a%20red%20square"

        # The upload button: the image of row 3 finds itself first.
        node = browser.call("DOM.getDocument")["root"]["nodeId"]
        field = browser.call("DOM.querySelector", nodeId=node, selector="#image")["nodeId"]
        browser.call("DOM.setFileInputFiles", nodeId=field, files=[str(served.images[3])])
        results = grid(browser, first_path=str(served.images[3]))
        assert [r["path"] for r in results] == served.image_ranking(3)[0]
        assert results[0]["shown"] == "1.000"
