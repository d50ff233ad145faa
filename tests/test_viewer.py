"""`hespotex view` on a real finished slide (the Aperio SVS decoded by the trained checkpoint):
its routes answer what the results hold, it refuses whatever is not one of its routes, and a
real headless Chromium (Debian's package, driven by Playwright) draws the slide, its tiles and
its spots, recoloured when the gene changes.

The browser test needs /usr/bin/chromium (`.ci/run` installs it) and OpenSeadragon
(`make viewer-assets`); it skips without them unless HESPOTEX_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import http.client
import io
import json
import threading
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SVS, unavailable, write_sheet
from PIL import Image

from hespotex.config import parse_config
from hespotex.errors import ConfigError
from hespotex.viewer.server import openseadragon_folder, serve

REQUIRE_BROWSER = "HESPOTEX_REQUIRE_BROWSER"
CHROMIUM = Path("/usr/bin/chromium")
ASSETS = REPO / "envs" / "viewer-assets"
REMOTE_URL = "s3://idc-open-data/0000-series/"


@pytest.fixture(scope="module")
def assets() -> Path:
    try:
        openseadragon_folder(ASSETS)
    except ConfigError as error:
        unavailable(str(error), REQUIRE_BROWSER)
    return ASSETS


@pytest.fixture(scope="module")
def viewer(decoded, tmp_path_factory, assets):
    """The viewer over the decoded slide's results, a slide that never ran, and the same
    results as a remote slide's (``s3://``: the viewer has no tiles for it)."""
    import shutil

    config, paths = decoded
    folder = tmp_path_factory.mktemp("viewer")
    for slide_id in ("svs", "remote-svs"):
        shutil.copytree(paths.root, folder / "results" / slide_id)
    rows = [("svs", SVS, None), ("never-run", SVS, None), ("remote-svs", REMOTE_URL, None)]
    sheet = write_sheet(folder / "samples.tsv", rows)
    view_config = parse_config(
        {
            **config.model_dump(mode="json"),
            "samples": str(sheet),
            "results": str(folder / "results"),
            "logs": str(folder / "logs"),
        }
    )
    server = serve(view_config, port=0, assets=assets)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def request(server, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    """One raw request: ``path`` is sent exactly as given, escapes and dots included."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    connection.putrequest(method, path, skip_accept_encoding=True)
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, response.getheader("Content-Type") or "", body


def get_json(server, path: str):
    status, content_type, body = request(server, path)
    assert status == 200 and content_type == "application/json", (path, status, body[:200])
    return json.loads(body)


def test_the_viewer_binds_to_this_machine_only_by_default(viewer):
    assert viewer.server_address[0] == "127.0.0.1"


def test_the_cohort_lists_every_slide_of_the_sheet_with_its_status(viewer):
    rows = {row["slide_id"]: row for row in get_json(viewer, "/api/cohort")}
    assert rows["svs"]["status"] == "done" and rows["svs"]["spots"] > 0
    assert rows["svs"]["has_thumbnail"] is True
    assert rows["never-run"]["status"] == "not run" and rows["never-run"]["has_thumbnail"] is False
    status, content_type, body = request(viewer, "/")
    assert status == 200 and content_type == "text/html" and b"cohort.js" in body


def test_a_slide_answers_its_genes_spots_qc_and_outline(viewer, decoded):
    import anndata as ad

    _, paths = decoded
    adata = ad.read_h5ad(paths.expression)
    info = get_json(viewer, "/api/slides/svs")
    assert info["spots"] == adata.n_obs and info["score"] == "served_pearson"
    assert [gene["name"] for gene in info["genes"]] == list(adata.var_names)
    assert [gene["served_model"] for gene in info["genes"]] == list(adata.var["served_model"])
    assert info["default_gene"] == "PLANTED_HEMATOXYLIN"
    spots = get_json(viewer, "/api/slides/svs/spots?gene=PLANTED_HEMATOXYLIN")
    column = adata.var_names.get_loc("PLANTED_HEMATOXYLIN")
    assert np.allclose(spots["values"], adata.X[:, column], atol=1e-4)
    assert np.allclose(np.c_[spots["x"], spots["y"]], adata.obsm["spatial"], atol=0.1)
    assert spots["range"][0] < spots["range"][1]
    assert set(spots["qc"]["qc"]) <= {"ok", "flagged"}
    outline = get_json(viewer, "/api/slides/svs/outline")
    assert outline and all(len(polygon) >= 8 for polygon in outline)
    points = np.concatenate([np.array(polygon) for polygon in outline])
    assert points.min() >= -1 and points[:, 0].max() <= info["width_px"] + 1
    status, _, body = request(viewer, "/api/slides/svs/spots?gene=NOT_A_GENE")
    assert status == 404 and b"NOT_A_GENE" in body


def test_a_score_not_measured_is_null_in_the_json(decoded, tmp_path):
    """A spot quality control did not score for blur (blur off) has NaN in ``obs``; the
    browser gets null, not NaN, which no JSON parser reads."""
    import shutil

    import anndata as ad

    from hespotex.viewer.results import Results

    config, paths = decoded
    results = tmp_path / "results"
    shutil.copytree(paths.root, results / "svs")
    adata = ad.read_h5ad(results / "svs" / "expression.h5ad")
    adata.obs["blur_score"] = np.nan
    adata.write_h5ad(results / "svs" / "expression.h5ad")
    sheet = write_sheet(tmp_path / "samples.tsv", [("svs", SVS, None)])
    view_config = parse_config(
        {**config.model_dump(mode="json"), "samples": str(sheet), "results": str(results)}
    )
    spots = Results(view_config).spots("svs", "PLANTED_HEMATOXYLIN")
    assert set(spots["qc"]["blur_score"]) == {None}
    assert json.loads(json.dumps(spots, allow_nan=False))["qc"]["blur_score"][0] is None


def test_deep_zoom_tiles_come_from_the_slide_at_full_resolution(viewer):
    from hespotex.io.slide import open_slide

    status, content_type, body = request(viewer, "/tiles/svs.dzi")
    assert status == 200 and content_type == "application/xml"
    size = ElementTree.fromstring(body).find("{*}Size")
    with open_slide(SVS, "svs") as slide:
        assert (int(size.get("Width")), int(size.get("Height"))) == slide.dimensions
        top_level = int(np.ceil(np.log2(max(slide.dimensions))))
        expected = slide.backend.read_region((0, 0), 0, (254, 254))
    status, content_type, body = request(viewer, f"/tiles/svs_files/{top_level}/0_0.jpeg")
    assert status == 200 and content_type == "image/jpeg"
    tile = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    assert tile.shape == (255, 255, 3), "a corner tile: 254 px and one pixel of overlap"
    assert np.abs(tile[:254, :254].astype(int) - expected).mean() < 4, "JPEG of the same pixels"
    assert request(viewer, f"/tiles/svs_files/{top_level}/999_0.jpeg")[0] == 404


@pytest.mark.parametrize(
    "path",
    [
        "/static/../server.py",
        "/static/%2e%2e/server.py",
        "/static/openseadragon/../../../../../../etc/passwd",
        "/static/.hidden",
        "/static/openseadragon/%2e%2e/%2e%2e/package.json",
        "/api/slides/..%2F..%2Fetc/spots",
        "/api/slides/../../etc/passwd",
        "/tiles/../../etc/passwd.dzi",
        "/slide/not-in-the-sheet",
        "/api/slides/not-in-the-sheet/thumbnail.png",
        "//etc/passwd",
    ],
)
def test_paths_outside_the_routes_are_refused(viewer, path):
    status, _, body = request(viewer, path)
    assert status == 404
    assert b"root:" not in body and b"import" not in body


def test_a_request_naming_another_host_is_refused(viewer):
    """A page elsewhere whose name resolves to 127.0.0.1 (DNS rebinding) reads nothing."""
    connection = http.client.HTTPConnection(*viewer.server_address[:2], timeout=60)
    connection.putrequest("GET", "/api/cohort", skip_host=True)
    connection.putheader("Host", "evil.example:8765")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 403 and b"svs" not in response.read()
    connection.close()
    assert request(viewer, "/api/cohort")[0] == 200


def test_only_reading_is_answered(viewer):
    assert request(viewer, "/api/cohort", method="POST")[0] == 501
    assert request(viewer, "/api/cohort", method="HEAD")[0] == 200


def test_a_missing_openseadragon_says_how_to_install_it(tmp_path):
    with pytest.raises(ConfigError, match="make viewer-assets"):
        openseadragon_folder(tmp_path)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        unavailable(f"{CHROMIUM} is missing (apt-get install chromium)", REQUIRE_BROWSER)
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


def overlay_pixel(page, spot: int) -> list[int]:
    """The overlay canvas's RGBA at spot ``spot``'s centre, as drawn (over the slide's tiles,
    or its thumbnail: ``state.scale`` image pixels per level-0 pixel)."""
    return page.evaluate(
        """(spot) => {
            const {state, viewer} = window.hespotex;
            const item = viewer.world.getItemAt(0);
            const point = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(
                state.spots.x[spot] * state.scale, state.spots.y[spot] * state.scale));
            const canvas = document.getElementById("overlay");
            const ratio = canvas.width / canvas.clientWidth;
            return Array.from(canvas.getContext("2d").getImageData(
                Math.round(point.x * ratio), Math.round(point.y * ratio), 1, 1).data);
        }""",
        spot,
    )


def matching_colours(page, pixels: dict[int, list[int]]) -> int:
    """How many of the spots' drawn pixels have the colour the page gives their value."""
    expected = page.evaluate(
        "spots => spots.map(i => window.hespotex.spotColour(i).match(/\\d+/g).map(Number))",
        list(pixels),
    )
    return sum(
        pixel[3] > 0 and max(abs(a - b) for a, b in zip(pixel[:3], colour, strict=True)) <= 3
        for pixel, colour in zip(pixels.values(), expected, strict=True)
    )


def test_a_real_browser_draws_the_cohort_the_slide_its_tiles_and_spots(viewer, browser, tmp_path):
    base = f"http://127.0.0.1:{viewer.server_address[1]}"
    tiles: list[tuple[str, int]] = []
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("response", lambda r: tiles.append((r.url, r.status)) if "_files/" in r.url else None)

    page.goto(f"{base}/")
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("tr[data-slide]").count() == 3
    page.fill("#search", "never")
    assert page.locator("tr[data-slide]").count() == 1
    page.fill("#search", "")
    page.screenshot(path=tmp_path / "cohort.png")
    page.click("a[href='/slide/svs']")

    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    page.wait_for_function("window.hespotex.viewer.world.getItemAt(0).getFullyLoaded()")
    drawn = int(page.get_attribute("#overlay", "data-spots-drawn"))
    spots = page.evaluate("window.hespotex.state.spots.x.length")
    assert 0 < drawn <= spots
    assert tiles and all(status == 200 for _, status in tiles)
    page.screenshot(path=tmp_path / "slide.png")

    values = page.evaluate("window.hespotex.state.spots.values")
    sample = range(0, len(values), max(1, len(values) // 40))
    before = {index: overlay_pixel(page, index) for index in sample}
    assert matching_colours(page, before) >= 0.9 * len(before), "each spot in its gene's colour"
    other = page.evaluate(
        "window.hespotex.state.info.genes.map(g => g.name).find(n => n !== 'PLANTED_HEMATOXYLIN')"
    )
    page.select_option("#gene", other)
    page.wait_for_selector(f"body[data-gene='{other}']")
    assert page.evaluate("window.hespotex.state.spots.values") != values
    after = {index: overlay_pixel(page, index) for index in sample}
    assert matching_colours(page, after) >= 0.9 * len(after)
    changed = sum(after[index][:3] != before[index][:3] for index in sample)
    assert changed >= len(sample) / 4, "another gene, other colours"
    spot = int(np.argmax(page.evaluate("window.hespotex.state.spots.values")))

    levels_before = {int(url.split("_files/")[1].split("/")[0]) for url, _ in tiles}
    width, height = page.evaluate(
        "[window.hespotex.state.info.width_px, window.hespotex.state.info.height_px]"
    )
    full_resolution = int(np.ceil(np.log2(max(width, height))))
    assert max(levels_before) < full_resolution, "the whole slide is first shown shrunk"
    with page.expect_response(lambda response: f"_files/{full_resolution}/" in response.url):
        page.evaluate(
            """(spot) => {
                const {state, viewer} = window.hespotex;
                const item = viewer.world.getItemAt(0);
                const [x, y] = [state.spots.x[spot], state.spots.y[spot]];
                const centre = item.imageToViewportCoordinates(x, y);
                viewer.viewport.zoomTo(viewer.viewport.getMaxZoom(), centre, true);
                viewer.viewport.panTo(centre, true);
            }""",
            spot,
        )
    page.wait_for_function("window.hespotex.viewer.world.getItemAt(0).getFullyLoaded()")
    assert all(status == 200 for _, status in tiles)
    page.screenshot(path=tmp_path / "zoomed.png")

    box = page.locator("#viewer").bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function("document.getElementById('spot-info').dataset.spot !== undefined")
    clicked = page.get_attribute("#spot-info", "data-spot")
    spot_ids = page.evaluate("window.hespotex.state.spots.spot_id")
    assert clicked == spot_ids[spot]
    assert other in page.text_content("#spot-info")

    page.goto(f"{base}/slide/remote-svs")
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    assert page.evaluate("window.hespotex.state.info.zoomable") is False
    assert int(page.get_attribute("#overlay", "data-spots-drawn")) > 0, "over the thumbnail"
    assert overlay_pixel(page, 0)[3] > 0, "each spot where the thumbnail shows it"
    page.close()
