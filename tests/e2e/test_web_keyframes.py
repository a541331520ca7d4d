"""The web page's image-to-video controls and its Extend button, in Debian's chromium on
the local stack (fixtures and helpers of test_web_page.py): an image picked or dropped is
previewed at once, uploaded through POST /v1/uploads and the signed PUT straight to
storage (fake-gcs-server), and named in the job's conditions; Extend continues a
finished job in one click.
"""

from __future__ import annotations

import hashlib
import io

import pytest
import requests
from PIL import Image

from . import test_web_page as web_page
from .test_web_page import job_item, open_with_key, shoot, unique

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the dev extras install it
    expect = None

pytestmark = [pytest.mark.emulators, pytest.mark.timeout(240)]

# The same fixtures: a stack without the worker (each test starts or stops it), a browser,
# a fresh tab that fails on a script error or a CSP block, and a session with the key.
stack, browser, page, api = web_page.stack, web_page.browser, web_page.page, web_page.api


def png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (120, 80), colour).save(out, format="PNG")
    return out.getvalue()


def drop_file(tab, selector: str, name: str, data: bytes, mime: str) -> None:
    """A file dropped on the element, as a person drags one from their desktop."""
    transfer = tab.evaluate_handle(
        """([name, bytes, mime]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, {type: mime}));
            return transfer;
        }""",
        [name, list(data), mime],
    )
    tab.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def test_a_picked_first_frame_and_a_dropped_last_frame_are_the_jobs_conditions(
    page, stack, api, tmp_path
):
    stack.down(["worker"])  # the job stays queued: what matters is what was accepted
    first, last = png((220, 30, 30)), png((30, 30, 220))
    (tmp_path / "first.png").write_bytes(first)
    uploads: list[dict] = []
    page.on(
        "response",
        lambda r: uploads.append(r.json()) if r.url.endswith("/v1/uploads") and r.ok else None,
    )
    puts: list[str] = []
    page.on("request", lambda r: puts.append(r.url) if r.method == "PUT" else None)
    open_with_key(page, stack)
    prompt = unique("a red sunrise")
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Frames").fill("17")

    page.get_by_label("First frame").set_input_files(str(tmp_path / "first.png"))
    preview = page.locator("#first-preview")
    expect(preview).to_be_visible()
    expect(page.locator("#first-note")).to_have_text("first.png uploaded")
    # The preview is the chosen image itself, decoded (a CSP block would leave it empty).
    assert preview.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [120, 80]
    drop_file(page, "#last-drop", "last.png", last, "image/png")
    expect(page.locator("#last-preview")).to_be_visible()
    expect(page.locator("#last-note")).to_have_text("last.png uploaded")
    shoot(page, "08-keyframes")

    page.get_by_role("button", name="Generate").click()
    item = job_item(page, prompt)
    expect(item.locator(".state")).to_have_text("queued")
    job = api.get(f"{stack.api_url}/v1/jobs/{item.get_attribute('data-job-id')}").json()
    assert len(uploads) == 2 and puts == [u["upload_url"] for u in uploads]
    named = [(c["image"], c["frame_index"]) for c in job["request"]["conditions"]]
    assert named == [(uploads[0]["uri"], 0), (uploads[1]["uri"], -1)]
    assert all(c.get("strength", 1.0) == 1.0 for c in job["request"]["conditions"])
    # What intake read back from storage is what the page PUT there.
    assert [i["sha256"] for i in job["inputs"]] == [
        hashlib.sha256(first).hexdigest(),
        hashlib.sha256(last).hexdigest(),
    ]
    assert [i["frame_index"] for i in job["inputs"]] == [0, 16]


def test_a_file_that_is_not_an_image_is_refused_in_the_page(page, stack):
    posted: list[str] = []
    page.on("request", lambda r: posted.append(r.url) if r.method in ("POST", "PUT") else None)
    open_with_key(page, stack)
    drop_file(page, "#first-drop", "notes.txt", b"not an image", "text/plain")
    expect(page.locator("#f-conditions-error")).to_have_text(
        "notes.txt is not a PNG, JPEG or WebP image"
    )
    expect(page.get_by_label("First frame")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#first-preview")).to_be_hidden()
    assert not posted


def generate_refused(page, item: int) -> str:
    """Click Generate, expect the API's 422 on `$.conditions[item]`; its message."""
    with page.expect_response(
        lambda r: r.url.endswith("/v1/jobs") and r.request.method == "POST"
    ) as answer:
        page.get_by_role("button", name="Generate").click()
    assert answer.value.status == 422
    (detail,) = answer.value.json()["error"]["details"]
    assert detail["path"].startswith(f"$.conditions[{item}].")
    return detail["message"]


def expect_error_under(page, label: str, message: str) -> None:
    """`message` under the picker `label` ("First frame"), nothing under the other one."""
    ids = {"First frame": "#f-conditions-error", "Last frame": "#f-last-image-error"}
    (other,) = set(ids) - {label}
    expect(page.locator(ids[label])).to_have_text(f"{label} {message}")
    expect(page.get_by_label(label)).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label(label)).to_be_focused()
    expect(page.locator(ids[other])).to_be_hidden()
    expect(page.get_by_label(other)).to_have_attribute("aria-invalid", "false")


def test_an_image_the_api_refuses_is_reported_under_its_own_picker(page, stack):
    """A file that claims to be a PNG passes the page's check and uploads; the API reads its
    bytes and refuses the item. The error shows under the picker the item came from: item
    0 is the first frame beside a last one, item 1 the last frame, and item 0 the last
    frame alone. The next submit clears it."""
    bad, good = b"not an image at all", png((220, 30, 30))
    open_with_key(page, stack)
    page.get_by_label("Prompt", exact=True).fill(unique("a refused frame"))
    page.get_by_label("Frames").fill("17")
    drop_file(page, "#first-drop", "first.png", bad, "image/png")
    drop_file(page, "#last-drop", "last.png", good, "image/png")
    expect(page.locator("#last-note")).to_have_text("last.png uploaded")
    expect(page.locator("#first-note")).to_have_text("first.png uploaded")
    expect_error_under(page, "First frame", generate_refused(page, 0))

    drop_file(page, "#first-drop", "first.png", good, "image/png")
    drop_file(page, "#last-drop", "last.png", bad, "image/png")
    expect(page.locator("#first-note")).to_have_text("first.png uploaded")
    expect(page.locator("#last-note")).to_have_text("last.png uploaded")
    expect_error_under(page, "Last frame", generate_refused(page, 1))

    page.locator("#first-clear").click()  # alone, the last frame is item 0
    expect_error_under(page, "Last frame", generate_refused(page, 0))

    page.get_by_label("Frames").fill("18")  # refused in the page: a new list of errors
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#f-num_frames-error")).to_be_visible()
    expect(page.locator("#f-last-image-error")).to_be_hidden()
    expect(page.get_by_label("Last frame")).to_have_attribute("aria-invalid", "false")


def test_an_error_on_all_the_images_is_shown_with_the_forms_errors(page, stack):
    """`$.conditions` itself ("model X cannot condition"; every model of the local stack
    can, so the API's answer is stood in for) is about no one picker."""
    message = "model ltx-video-2b cannot condition; models that can: tiny-random"
    refusal = {
        "error": {
            "code": "invalid_argument",
            "message": "the request is invalid",
            "details": [{"path": "$.conditions", "message": message}],
            "retryable": False,
        }
    }
    page.route(
        "**/v1/jobs",
        lambda route: (
            route.fulfill(status=422, json=refusal)
            if route.request.method == "POST"
            else route.fallback()
        ),
    )
    open_with_key(page, stack)
    page.get_by_label("Prompt", exact=True).fill(unique("no model conditions"))
    drop_file(page, "#last-drop", "last.png", png((30, 30, 220)), "image/png")
    expect(page.locator("#last-note")).to_have_text("last.png uploaded")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#form-error")).to_have_text(
        f"The API refused the request. Images: {message}"
    )
    expect(page.locator("#f-conditions-error")).to_be_hidden()
    expect(page.locator("#f-last-image-error")).to_be_hidden()


def test_uploads_that_failed_are_each_reported_under_their_own_picker(page, stack):
    posted: list[str] = []
    page.on("request", lambda r: posted.append(r.url) if r.url.endswith("/v1/jobs") else None)
    open_with_key(page, stack)
    page.get_by_label("Prompt", exact=True).fill(unique("uploads that failed"))
    # The signed PUTs never reach storage.
    page.route(
        "**/*",
        lambda route: route.abort() if route.request.method == "PUT" else route.fallback(),
    )
    drop_file(page, "#first-drop", "first.png", png((220, 30, 30)), "image/png")
    drop_file(page, "#last-drop", "last.png", png((30, 30, 220)), "image/png")
    expect(page.locator("#f-last-image-error")).to_contain_text("last.png could not be uploaded")
    expect(page.locator("#f-conditions-error")).to_contain_text("first.png could not be uploaded")

    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#form-error")).to_have_text(
        "Not submitted: an image could not be uploaded."
    )
    for label, error in (
        ("First frame", "#f-conditions-error"),
        ("Last frame", "#f-last-image-error"),
    ):
        expect(page.locator(error)).to_contain_text(f"{label} could not be uploaded")
        expect(page.get_by_label(label)).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("First frame")).to_be_focused()
    page.wait_for_timeout(300)  # a POST sent after the errors would show by now
    assert not posted


def test_extend_continues_a_finished_job_in_one_click(page, stack, api):
    stack.up(["worker"])
    prompt = unique("a paper boat")
    body = {"prompt": prompt, "width": 96, "height": 64, "num_inference_steps": 2}
    parent = api.post(f"{stack.api_url}/v1/jobs", json=body).json()["job_id"]
    open_with_key(page, stack)
    item = page.locator(f'li.job[data-job-id="{parent}"]')
    expect(item.locator(".state")).to_have_text("succeeded", timeout=120_000)
    page.get_by_label("Prompt", exact=True).fill("the boat drifts away")

    item.get_by_role("button", name="Extend").click()
    extended = page.locator("li.job").first  # newest first
    expect(extended.locator(".job-lineage")).to_have_text(f"Continues job {parent}")
    expect(extended.locator(".job-prompt")).to_be_focused()
    new_id = extended.get_attribute("data-job-id")
    assert new_id != parent
    job = api.get(f"{stack.api_url}/v1/jobs/{new_id}").json()
    assert job["request"]["extend"]["job_id"] == parent
    assert job["request"]["extend"].get("frames", 9) == 9  # the API's default
    assert job["parent_job_id"] == parent
    assert job["request"]["prompt"] == "the boat drifts away"  # the form's prompt
    assert job["request"]["num_frames"] == 17  # the parent's 9 frames, continued
    expect(extended.locator(".state")).to_have_text("succeeded", timeout=120_000)
    shoot(page, "09-extended")

    # Its player links the joined, longer video; a job that extended nothing has no link.
    extended.get_by_role("button", name="Play").click()
    whole = page.get_by_role("link", name="whole video")
    expect(whole).to_be_visible()
    fetched = requests.get(whole.get_attribute("href") or "", timeout=10)  # no key: signed
    assert fetched.status_code == 200 and fetched.content[4:8] == b"ftyp"
    item.get_by_role("button", name="Play").click()
    expect(page.locator("#player-caption")).to_have_text(prompt)
    expect(whole).to_be_hidden()
