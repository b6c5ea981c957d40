"""Headless-browser checks of an MLflow tracking server's web UI (MLflow 3.17): an experiment's runs
table lists given runs, and a run's PNG artifact renders as an image on the run's artifact page.

Playwright's Python package drives a system Chromium (Debian's `chromium`, or GENDL_CHROMIUM);
`playwright install` is never needed. By hand, against a running server:

    from pathlib import Path
    from tests.team.browser import artifact_image_renders, browser_page, runs_table_shows

    url = "http://127.0.0.1:5000"
    with browser_page() as page:  # browser_page(http_credentials=(user, password)) for basic auth
        runs_table_shows(page, url, "1", ["train", "sample"], screenshot=Path("runs.png"))
        artifact_image_renders(page, url, "1", run_id, "samples/grid.png", screenshot=Path("grid.png"))

The routes are MLflow 3.17's hash routes (its UI's `RoutePaths`): `#/experiments/<id>/runs` is the
runs table (plain `#/experiments/<id>` redirects to the GenAI overview instead) and
`#/experiments/<id>/runs/<run id>/artifactPath/<path>` a run's artifact page with that file open.

Nested runs show as collapsed rows under their parent (a search filter matching only the child
still shows it under its parent), so while a name is missing, runs_table_shows clicks the expander
of each parent run in the table once. Each check first clears the UI state MLflow keeps in
localStorage, so parents start collapsed and a click expands. Only rendered rows count: the table
loads runs a page at a time, newest first, and AG Grid renders the rows in view and a few more:
enough for the runs of a test, not for a name deep in a big experiment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM_ENV = "GENDL_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Playwright adds --headless, --no-sandbox (as root) and more itself; these keep Chromium off the
# network it cannot reach here (updates, sync, QUIC probes), which otherwise logs refused connections.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}

RUN_NAME_CELL = '[role="gridcell"][col-id="attributes.`Run Name`"]'
# The only button of a run-name cell is the expander of a parent run's nested runs.
EXPANDER = f"{RUN_NAME_CELL} button"
# MLflow's "Assistant" side panel opens by itself on a first visit and squeezes the page.
UI_SETTINGS = {
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
    "mlflow.assistant.panelOpen_v1": "false",
}
POLL_MS = 250

RESET_LOCAL_STORAGE_JS = """(settings) => {
  localStorage.clear();
  for (const [key, value] of Object.entries(settings)) localStorage.setItem(key, value);
}"""

_CRC32_JS = """const crc32 = (bytes) => {
    let crc = -1;
    for (const byte of bytes) {
      crc ^= byte;
      for (let bit = 0; bit < 8; bit++) crc = (crc >>> 1) ^ (0xedb88320 & -(crc & 1));
    }
    return (crc ^ -1) >>> 0;
  };"""
# The artifact as the UI's own request gets it (GET /get-artifact, with the page's credentials):
# HTTP status, length and CRC-32 of its bytes.
ARTIFACT_DIGEST_JS = f"""async (url) => {{
  {_CRC32_JS}
  const response = await fetch(url);
  const bytes = new Uint8Array(await response.arrayBuffer());
  return {{status: response.status, length: bytes.length, crc32: crc32(bytes)}};
}}"""
# Of each decoded <img> (naturalWidth > 0): its size and the length and CRC-32 of the bytes its src
# holds. The UI shows an artifact as a blob: URL of the bytes it fetched, so the bytes, not the src,
# tie an image to the artifact.
RENDERED_IMAGES_JS = f"""async () => {{
  {_CRC32_JS}
  const decoded = [...document.images].filter((img) => img.complete && img.naturalWidth > 0);
  return Promise.all(decoded.map(async (img) => {{
    const src = img.currentSrc || img.src;
    const shown = {{src: src.slice(0, 100), width: img.naturalWidth, height: img.naturalHeight}};
    try {{
      const bytes = new Uint8Array(await (await fetch(src)).arrayBuffer());
      return {{...shown, length: bytes.length, crc32: crc32(bytes)}};
    }} catch (error) {{
      return {{...shown, error: String(error)}};
    }}
  }}));
}}"""


def chromium_path() -> str | None:
    """The Chromium executable to drive: GENDL_CHROMIUM (a path or a command name) if set, else the
    first of CHROMIUM_NAMES on PATH; None if there is none."""
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        return shutil.which(configured)
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


@contextlib.contextmanager
def browser_page(
    executable: str | None = None, http_credentials: tuple[str, str] | None = None
) -> Iterator[Page]:
    """A page of a fresh headless Chromium (a new profile each time). http_credentials: (user,
    password) for HTTP basic authentication, e.g. MLflow's basic-auth app."""
    from playwright.sync_api import sync_playwright

    executable = executable or chromium_path()
    if executable is None:
        raise RuntimeError(f"no Chromium found: `apt-get install chromium` or set {CHROMIUM_ENV}")
    credentials = None
    if http_credentials:
        credentials = {"username": http_credentials[0], "password": http_credentials[1]}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport=VIEWPORT, http_credentials=credentials)
            yield context.new_page()
        finally:
            browser.close()


def runs_page_url(tracking_url: str, experiment_id: str) -> str:
    return f"{tracking_url.rstrip('/')}/#/experiments/{quote(experiment_id, safe='')}/runs"


def artifact_page_url(tracking_url: str, experiment_id: str, run_id: str, artifact_path: str) -> str:
    run_page = f"{runs_page_url(tracking_url, experiment_id)}/{quote(run_id, safe='')}"
    return f"{run_page}/artifactPath/{quote(artifact_path)}"


def artifact_download_url(tracking_url: str, run_id: str, artifact_path: str) -> str:
    query = f"path={quote(artifact_path, safe='')}&run_uuid={quote(run_id, safe='')}"
    return f"{tracking_url.rstrip('/')}/get-artifact?{query}"


def open_with_default_ui_state(page: Page, tracking_url: str, url: str, timeout_s: float) -> None:
    """Opens url with none of the UI state MLflow keeps in localStorage (filters, sort, expanded
    runs) from earlier visits, so every check starts from the same default view."""
    from playwright.sync_api import Error

    try:
        # /health is a plain page of the same origin: its localStorage, without the app running.
        page.goto(f"{tracking_url.rstrip('/')}/health", timeout=timeout_s * 1000)
        page.evaluate(RESET_LOCAL_STORAGE_JS, UI_SETTINGS)
        page.goto(url, timeout=timeout_s * 1000)
    except Error as error:  # e.g. net::ERR_CONNECTION_REFUSED, net::ERR_INVALID_AUTH_CREDENTIALS
        raise AssertionError(f"cannot open {url}: {error.message.splitlines()[0]}") from error


def shown_run_names(page: Page) -> list[str]:
    """The run names in the rendered rows of the runs table (AG Grid renders the rows in view and a
    few more)."""
    links = page.locator(f"{RUN_NAME_CELL} a")
    return links.evaluate_all("(links) => links.map((link) => link.textContent.trim())")


def expand_parent_runs(page: Page, expanded: set[str]) -> None:
    """Clicks the expander of every parent run not in expanded (row ids, which are run ids) and adds
    them: nested runs are collapsed under their parent by default."""
    from playwright.sync_api import Error

    row_ids = page.locator(f'[role="row"]:has({EXPANDER})').evaluate_all(
        "(rows) => rows.map((row) => row.getAttribute('row-id'))"
    )
    for row_id in row_ids:
        if row_id and row_id not in expanded:
            try:
                page.locator(f'[role="row"][row-id="{row_id}"] {EXPANDER}').click(timeout=2000)
            except Error:  # the table re-rendered under the click: the next poll tries again
                continue
            expanded.add(row_id)


def holds_bytes_of(image: dict, artifact: dict) -> bool:
    return (image.get("length"), image.get("crc32")) == (artifact["length"], artifact["crc32"])


def save_screenshot(page: Page, path: Path | None, prefix: str) -> Path:
    if path is None:
        handle, name = tempfile.mkstemp(prefix=prefix, suffix=".png")
        os.close(handle)
        path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    return path


def runs_table_shows(
    page: Page,
    tracking_url: str,
    experiment_id: str,
    run_names: list[str],
    timeout_s: float = 60,
    screenshot: Path | None = None,
) -> Path | None:
    """Waits until the experiment's runs table shows every run in run_names, expanding parent runs
    so nested runs show too. Returns the screenshot path if one was asked for. Raises AssertionError
    naming the missing runs and a screenshot (screenshot, else a temporary file) on timeout."""
    deadline = time.monotonic() + timeout_s
    url = runs_page_url(tracking_url, experiment_id)
    open_with_default_ui_state(page, tracking_url, url, timeout_s)
    expanded: set[str] = set()
    while True:
        shown = shown_run_names(page)
        missing = [name for name in run_names if name not in shown]
        if not missing:
            return save_screenshot(page, screenshot, "mlflow-runs-") if screenshot else None
        if time.monotonic() > deadline:
            path = save_screenshot(page, screenshot, "mlflow-runs-")
            raise AssertionError(
                f"MLflow runs table {url} does not show run(s) {missing} after {timeout_s:g} s; "
                f"it shows {shown}; screenshot: {path}"
            )
        expand_parent_runs(page, expanded)
        page.wait_for_timeout(POLL_MS)


def artifact_image_renders(
    page: Page,
    tracking_url: str,
    experiment_id: str,
    run_id: str,
    artifact_path: str,
    timeout_s: float = 60,
    screenshot: Path | None = None,
) -> Path | None:
    """Waits until the run's artifact page for artifact_path shows it as an image the browser decoded
    (an <img> with naturalWidth > 0 holding exactly the artifact's bytes). Returns the screenshot
    path if one was asked for. Raises AssertionError with a screenshot (screenshot, else a temporary
    file) on timeout."""
    deadline = time.monotonic() + timeout_s
    url = artifact_page_url(tracking_url, experiment_id, run_id, artifact_path)
    open_with_default_ui_state(page, tracking_url, url, timeout_s)
    download_url = artifact_download_url(tracking_url, run_id, artifact_path)
    artifact = {"status": None}
    while True:
        if artifact["status"] != 200:  # fetched once it is served: it can be big
            artifact = page.evaluate(ARTIFACT_DIGEST_JS, download_url)
        images = page.evaluate(RENDERED_IMAGES_JS)
        if artifact["status"] == 200 and any(holds_bytes_of(image, artifact) for image in images):
            return save_screenshot(page, screenshot, "mlflow-artifact-") if screenshot else None
        if time.monotonic() > deadline:
            if artifact["status"] != 200:
                reason = f"GET {download_url} answered HTTP {artifact['status']}"
            else:
                reason = f"no decoded <img> holds its {artifact['length']} bytes; decoded images: {images}"
            path = save_screenshot(page, screenshot, "mlflow-artifact-")
            raise AssertionError(
                f"MLflow artifact page {url} after {timeout_s:g} s: {reason}; screenshot: {path}"
            )
        page.wait_for_timeout(POLL_MS)
