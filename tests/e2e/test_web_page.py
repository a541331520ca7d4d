"""The web page in a real headless browser (Debian's chromium driven by Playwright) on the
local stack: the API function, the GPU worker on tiny-random, result_ready and the bridge.

One stack and one browser serve the whole module; each test gets a fresh browser context
(so a fresh sessionStorage) and an empty Firestore. Screenshots of the main states go to
build/screenshots/ for a person to look at.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from collections.abc import Iterator

import pytest
import requests
from google.cloud import firestore

from ltxv.core import schemas
from ltxv.core.jobs import utcnow
from ltxv.core.workers import IDLE, WorkerRegistry, worker_beat
from ltxv.local.stack import REPO_ROOT, LocalStack

from .conftest import running_stack

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the dev extras install it
    sync_playwright = None

pytestmark = [pytest.mark.emulators, pytest.mark.timeout(240)]

# The worker is started by the test that needs it, after the one that needs it stopped.
COMPONENTS = ["api", "result_ready", "bridge"]
SCREENSHOTS = REPO_ROOT / "build" / "screenshots"
CHROMIUM_PACKAGE = "chromium"  # Debian's; Playwright cannot download its own browser here
PAGE_SIZE = 10  # the page's (jobs.js)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if sync_playwright is None:
        pytest.fail("playwright is not installed: pip install -e '.[dev]'", pytrace=False)
    if not found:
        pytest.fail(
            "the browser tests need Chromium: install Debian's package with "
            f"`sudo apt-get install {CHROMIUM_PACKAGE}` (.ci/run does this)",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = _chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def stack(emulators) -> Iterator[LocalStack]:
    with running_stack(emulators, COMPONENTS) as running:
        try:
            yield running
        finally:
            running.down(["worker"])


@pytest.fixture
def page(browser, stack, clean_firestore, request) -> Iterator[Page]:
    """A fresh tab; fails the test on a script error or a Content-Security-Policy block."""
    context = browser.new_context(**getattr(request, "param", {}))
    context.set_default_timeout(15_000)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    tab.on(
        "console",
        lambda message: (
            problems.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    yield tab
    context.close()
    assert not problems, problems


@pytest.fixture
def api(stack) -> Iterator[requests.Session]:
    session = requests.Session()
    session.headers["X-API-Key"] = stack.api_key
    yield session
    session.close()


def shoot(page: Page, name: str, full_page: bool = True) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


def open_with_key(page: Page, stack: LocalStack, key: str | None = None) -> None:
    page.goto(f"{stack.api_url}/")
    page.get_by_label("API key", exact=True).fill(key or stack.api_key)
    page.get_by_label("API key", exact=True).press("Enter")
    if key is None:
        expect(page.get_by_role("heading", name="Generate a video")).to_be_visible()


def job_item(page: Page, prompt: str):
    return page.locator("li.job", has=page.locator(".job-prompt", has_text=prompt))


def unique(prompt: str) -> str:
    return f"{prompt} {uuid.uuid4().hex[:6]}"


# --- the key and the form -------------------------------------------------------------------


def test_a_wrong_key_is_rejected_with_a_clear_message(page, stack):
    open_with_key(page, stack, key="ltxv_not-a-key")
    error = page.locator("#api-key-error")
    expect(error).to_contain_text("The API rejected this key (invalid API key)")
    expect(page.get_by_label("API key", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("API key", exact=True)).to_be_focused()
    expect(page.locator("#app")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0
    shoot(page, "01-wrong-key")


def test_a_bad_size_is_refused_in_the_page_next_to_its_field(page, stack):
    posted: list[str] = []
    page.on("request", lambda r: posted.append(r.url) if r.method == "POST" else None)
    open_with_key(page, stack)
    assert page.evaluate("Object.keys(sessionStorage)") == ["ltxv.apiKey"]
    assert stack.api_key not in page.url
    page.get_by_label("Prompt", exact=True).fill("a lighthouse at dawn")
    page.get_by_label("Width (pixels)").fill("100")
    page.get_by_label("Frames").fill("10")
    page.get_by_role("button", name="Generate").click()

    width = page.get_by_label("Width (pixels)")
    expect(page.locator("#f-width-error")).to_have_text("Width (pixels) must be divisible by 32")
    expect(page.locator("#f-num_frames-error")).to_have_text(
        "Frames must be 8k + 1 (e.g. 9 or 17), got 10"
    )
    expect(width).to_have_attribute("aria-invalid", "true")
    expect(width).to_be_focused()  # the first field to fix
    # The error is part of the field's accessible description.
    assert "f-width-error" in (width.get_attribute("aria-describedby") or "")
    page.keyboard.press("Tab")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", ""), "keyboard focus must be visible"
    assert not posted, "nothing may be sent while the form is invalid"
    shoot(page, "02-invalid-size")


def test_the_servers_422_details_appear_next_to_their_fields(page, stack):
    """With the page's copy of the limits loosened, only the server catches the height."""

    def loosened(route):
        document = route.fetch().json()
        limits = document["x-ltxv-request-rules"]["models"]["tiny-random"]["limits"]
        limits["height"]["max"] = 4096
        route.fulfill(json=document)

    page.route("**/openapi.json", loosened)
    open_with_key(page, stack)
    page.get_by_label("Prompt", exact=True).fill("too tall")
    page.get_by_label("Height (pixels)").fill("2048")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#f-height-error")).to_have_text(
        "Height (pixels) must be between 32 and 1280 for model tiny-random (got 2048)"
    )
    expect(page.locator("#form-error")).to_contain_text("The API refused the request.")


# --- jobs: queued, paged, canceled (worker stopped), then rendered and played --------------


def test_past_generations_page_and_a_queued_job_cancels(page, stack, api):
    stack.down(["worker"])  # nothing renders: every job stays queued
    prompts = [unique(f"older job {n}") for n in range(PAGE_SIZE + 1)]
    for prompt in prompts:
        response = api.post(f"{stack.api_url}/v1/jobs", json={"prompt": prompt})
        assert response.status_code == 202, response.text
    open_with_key(page, stack)
    jobs = page.locator("li.job")
    expect(jobs).to_have_count(PAGE_SIZE)
    page.get_by_role("button", name="Show older generations").click()
    expect(jobs).to_have_count(PAGE_SIZE + 1)
    expect(job_item(page, prompts[0])).to_be_visible()  # the oldest, from the second page
    expect(page.get_by_role("button", name="Show older generations")).to_be_hidden()

    prompt = unique("a queue that never moves")
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_role("button", name="Generate").press("Enter")  # keyboard only
    item = job_item(page, prompt)
    expect(item.locator(".state")).to_have_text("queued")
    expect(jobs.first).to_contain_text(prompt)  # newest first
    expect(item.locator(".progress-text")).to_have_text("waiting for a worker")
    # All eleven older jobs wait ahead of it, and with no worker up nothing says when.
    expect(item.locator(".job-queue")).to_have_text("11 jobs ahead · no estimate yet")
    shoot(page, "03-queued")

    item.get_by_role("button", name="Cancel").click()
    expect(item.locator(".state")).to_have_text("canceled")
    expect(page.get_by_role("status")).to_contain_text("canceled")
    job_id = item.get_attribute("data-job-id")
    assert api.get(f"{stack.api_url}/v1/jobs/{job_id}").json()["state"] == "canceled"
    shoot(page, "04-canceled")


def test_a_canceled_job_is_retried_from_its_retry_button(page, stack, api):
    stack.down(["worker"])  # the retry stays queued
    prompt = unique("a kite over the dunes")
    job_id = api.post(f"{stack.api_url}/v1/jobs", json={"prompt": prompt}).json()["job_id"]
    open_with_key(page, stack)
    parent = page.locator(f'li.job[data-job-id="{job_id}"]')
    expect(parent.locator(".state")).to_have_text("queued")
    expect(parent.get_by_role("button", name="Retry")).to_be_hidden()  # not failed
    parent.get_by_role("button", name="Cancel").click()
    expect(parent.locator(".state")).to_have_text("canceled")

    parent.get_by_role("button", name="Retry").click()
    retried = page.locator("li.job").first  # newest first
    expect(retried.locator(".job-lineage")).to_have_text(f"Retry of job {job_id}")
    expect(retried.locator(".state")).to_have_text("queued")
    expect(retried.locator(".job-prompt")).to_have_text(prompt)
    expect(retried.locator(".job-prompt")).to_be_focused()
    expect(page.get_by_role("status")).to_contain_text("as a new job: queued")
    expect(parent.locator(".state")).to_have_text("canceled")
    new_id = retried.get_attribute("data-job-id")
    assert new_id != job_id
    stored = api.get(f"{stack.api_url}/v1/jobs/{new_id}").json()
    assert stored["parent_job_id"] == job_id and stored["request"]["prompt"] == prompt
    shoot(page, "04b-retried")


def test_the_priority_chosen_in_the_form_is_the_jobs_lane(page, stack, api):
    stack.down(["worker"])  # the jobs stay queued in their lanes
    open_with_key(page, stack)
    lanes = schemas.load("job-request")["properties"]["priority"]["enum"]
    options = page.locator("#f-priority option")
    assert options.evaluate_all("os => os.map(o => o.value)") == [v for v in lanes if v]
    expect(page.get_by_label("Priority", exact=True)).to_have_value(
        "normal"
    )  # the schema's default
    for label, lane in (("High", "high"), ("Low", "low")):
        prompt = unique(f"a {lane} priority lighthouse")
        page.get_by_label("Prompt", exact=True).fill(prompt)
        page.get_by_label("Priority", exact=True).select_option(label=label)
        page.get_by_role("button", name="Generate").click()
        item = job_item(page, prompt)
        expect(item.locator(".state")).to_have_text("queued")
        stored = api.get(f"{stack.api_url}/v1/jobs/{item.get_attribute('data-job-id')}").json()
        assert stored["priority"] == stored["request"]["priority"] == lane


def test_a_queued_job_shows_its_place_and_when_it_starts(page, stack, api):
    stack.down(["worker"])  # the jobs stay queued; a worker's heartbeat says what to expect
    WorkerRegistry(firestore.Client(project=stack.settings.project)).beat(
        worker_beat(
            worker_id="page-test",
            model="tiny-random",
            state=IDLE,
            ready=True,
            now=utcnow(),
            render_seconds=[30.0, 30.0],
        )
    )
    prompts = [unique(f"in line {n}") for n in range(3)]
    for prompt in prompts:
        assert api.post(f"{stack.api_url}/v1/jobs", json={"prompt": prompt}).status_code == 202
    open_with_key(page, stack)
    first, last = job_item(page, prompts[0]), job_item(page, prompts[2])
    expect(first.locator(".job-queue")).to_have_text("0 jobs ahead · starts any moment")
    # Two jobs of 30 s ahead on one idle worker: about a minute.
    expect(last.locator(".job-queue")).to_have_text(
        re.compile(r"^2 jobs ahead · starts in ~\d+ s$")
    )
    expect(last.locator(".job-queue")).to_have_attribute(
        "title", "2 jobs ahead; 1 live worker, median render 30 s over the last 2 renders"
    )
    seconds = int(re.search(r"~(\d+) s", last.locator(".job-queue").inner_text()).group(1))
    assert 50 <= seconds <= 60
    shoot(page, "03b-queue-eta")


def _wait_playing(page: Page, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        state = page.evaluate(
            """() => { const v = document.getElementById('player');
                return {ready: v.readyState, time: v.currentTime, played: v.played.length,
                        error: v.error && v.error.code, width: v.videoWidth,
                        height: v.videoHeight, src: v.currentSrc}; }"""
        )
        if state["error"] or (state["played"] and state["time"] > 0):
            return state
        time.sleep(0.1)
    raise AssertionError(f"the video did not play in {timeout}s: {state}")


def test_generate_watch_play_download_and_replay(page, stack):
    stack.up(["worker"])
    prompt = unique("a paper boat on a pond")
    open_with_key(page, stack)
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Seed").fill("7")
    # Enough steps that the render outlasts a poll or two, so progress shows.
    page.get_by_label("Inference steps").fill("50")
    page.get_by_label("Width (pixels)").fill("704")
    page.get_by_label("Height (pixels)").fill("480")
    page.get_by_label("Frames").fill("65")
    page.get_by_role("button", name="Generate").click()
    item = job_item(page, prompt)
    expect(item.locator(".state")).to_have_text("running", timeout=60_000)
    expect(item.locator(".progress-text")).to_have_text(re.compile(r"step [1-9]\d* of 50"))
    # The list's running item carries its own ETA, from its step rate.
    expect(item.locator(".job-queue")).to_have_text(
        re.compile(r"^done (in ~\d+ (s|min)|any moment)$")
    )
    shoot(page, "05-running")

    expect(item).to_have_attribute("data-state", "succeeded", timeout=120_000)
    expect(page.get_by_role("status")).to_contain_text("ready to play")
    expect(item.locator(".job-queue")).to_be_hidden()
    # Its poster, signed in the list, as a thumbnail the browser loaded under the CSP.
    thumb = item.locator("img.job-thumb")
    expect(thumb).to_be_visible()
    assert thumb.get_attribute("src").startswith(stack.storage_emulator_host + "/")
    page.wait_for_function(
        "(img) => img.complete && img.naturalWidth > 0", arg=thumb.element_handle()
    )
    assert thumb.evaluate("(img) => [img.naturalWidth, img.naturalHeight]") == [704, 480]
    shoot(page, "05b-thumbnail")
    item.get_by_role("button", name="Play").click()
    played = _wait_playing(page)
    assert played["error"] is None, f"chromium could not decode the mp4: {played}"
    assert (played["width"], played["height"]) == (704, 480)
    assert played["src"].startswith(stack.storage_emulator_host + "/")
    shoot(page, "06-playing")

    download = page.get_by_role("link", name="Download video")
    href = download.get_attribute("href")
    assert "response-content-disposition=attachment" in href
    video = requests.get(href, timeout=10)
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"

    # Replay: a reload keeps the key (same tab) and lists the past generation.
    page.reload()
    expect(item).to_have_attribute("data-state", "succeeded")
    item.get_by_role("button", name="Play").click()
    assert _wait_playing(page)["error"] is None


# Every way the page could learn of a job other than its event stream: the list and one job.
POLLS = re.compile(r".*/v1/jobs(\?.*|/[a-z2-7]{26})$")


def test_live_progress_comes_from_the_event_stream_alone(page, stack):
    stack.up(["worker"])
    prompt = unique("a kite over the dunes")
    open_with_key(page, stack)
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if r.url.endswith("/events") else None)
    page.route(POLLS, lambda route: route.abort())  # polling learns nothing from here on
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Inference steps").fill("50")
    page.get_by_label("Width (pixels)").fill("704")
    page.get_by_label("Height (pixels)").fill("480")
    page.get_by_label("Frames").fill("65")
    page.get_by_role("button", name="Generate").click()
    item = job_item(page, prompt)
    expect(item.locator(".state")).to_have_text("running", timeout=60_000)
    bar = item.locator("progress")
    expect(bar).to_have_attribute("max", "50")
    steps = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and item.get_attribute("data-state") == "running":
        steps.add(int(bar.evaluate("b => b.value")))
        time.sleep(0.2)
    expect(item).to_have_attribute("data-state", "succeeded", timeout=120_000)
    assert len(steps - {0}) >= 2, f"the bar moved through too few steps: {sorted(steps)}"
    assert streams and all("/v1/jobs/" in url for url in streams)
    page.unroute(POLLS)


def test_without_its_event_stream_the_page_polls(page, stack):
    stack.up(["worker"])
    prompt = unique("a lantern in the fog")
    page.route("**/events", lambda route: route.fulfill(status=404, json={"error": {}}))
    open_with_key(page, stack)
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_role("button", name="Generate").click()
    expect(job_item(page, prompt)).to_have_attribute("data-state", "succeeded", timeout=60_000)


@pytest.mark.parametrize(
    "page",
    [{"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}],
    indirect=True,
)
def test_on_a_phone_the_page_fits_the_screen(page, stack):
    open_with_key(page, stack)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    box = page.get_by_role("button", name="Generate").bounding_box()
    assert box and box["height"] >= 40, "touch targets stay large"
    shoot(page, "07-phone")


def test_the_api_logs_hold_no_key_and_no_prompt(stack):
    logged = stack.log_file("api").read_text(errors="replace")
    assert '"requestUrl": "/v1/jobs"' in logged
    assert stack.api_key not in logged
    assert "paper boat" not in logged and "page_token=" not in logged
    for line in logged.splitlines():
        if line.startswith("{"):
            assert "?" not in json.loads(line).get("httpRequest", {}).get("requestUrl", "")
