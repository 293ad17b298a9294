"""The web page in a real headless Chromium, against the whole stack on loopback.

The page is served with the Content-Security-Policy nginx sends in production, and any
script error or CSP violation fails the test. Screenshots land in test-artifacts/browser/.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    Route,
    expect,
    sync_playwright,
)

from services.common.models import insightface_image
from tests.conftest import REPO, ServiceProcess

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    # A synthetic camera, granted without a prompt, for the capture test.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
T1_FACES = 6

expect.set_options(timeout=30_000)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser test drives Debian's chromium; "
            "`make test` installs it (or: sudo apt-get install chromium)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, gateway_service: ServiceProcess) -> Iterator[Page]:
    """A fresh page (empty localStorage) served with the production CSP."""
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            problems.append(f"CSP violation: {message.text}")

    page.on("console", on_console)

    def with_csp(route: Route) -> None:
        response = route.fetch()
        route.fulfill(
            response=response, headers={**response.headers, "content-security-policy": CSP}
        )

    page.route(f"{gateway_service.url}/", with_csp)
    document = page.goto(gateway_service.url)
    assert document is not None
    assert document.headers["content-security-policy"] == CSP
    expect(page.get_by_test_id("gallery-select")).not_to_have_text("Loading…")
    yield page
    context.close()
    assert not problems, problems


@pytest.fixture(scope="module")
def t1() -> Path:
    return insightface_image("t1.jpg")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_gallery(gateway: ServiceProcess, name: str) -> None:
    reply = httpx.post(f"{gateway.url}/api/v1/galleries", json={"name": name}, timeout=30)
    assert reply.status_code == 201, reply.text


def enroll(gateway: ServiceProcess, gallery: str, subject: str, photo: Path, index: int) -> None:
    reply = httpx.post(
        f"{gateway.url}/api/v1/galleries/{gallery}/subjects/{subject}/faces",
        files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
        data={"face_index": str(index)},
        timeout=30,
    )
    assert reply.status_code == 201, reply.text


def screenshot(page: Page, name: str, part: Locator | None = None, full_page: bool = True) -> Path:
    """The whole page, the window, or one part, as test-artifacts/browser/NAME.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    if part is None:
        page.screenshot(path=str(path), full_page=full_page, animations="disabled")
    else:
        part.screenshot(path=str(path), animations="disabled")
    return path


def test_enroll_a_chosen_face_then_identify_the_photo(page: Page, t1: Path) -> None:
    gallery, subject = unique("browser"), unique("ada")

    page.get_by_role("button", name="New gallery").click()
    page.get_by_label("New gallery name").fill(gallery)
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.get_by_test_id("gallery-select")).to_have_value(gallery)
    expect(page.get_by_test_id("notice-title")).to_have_text(f"Gallery “{gallery}” created.")

    page.get_by_test_id("photo-input").set_input_files(t1)
    boxes = page.get_by_test_id("face-box")
    expect(boxes).to_have_count(T1_FACES)
    expect(page.get_by_test_id("face-item")).to_have_count(T1_FACES)
    expect(page.locator(".landmark")).to_have_count(5 * T1_FACES)
    expect(page.get_by_test_id("face-quality").first).to_contain_text("sharpness")

    # The keyboard path: the list of faces mirrors the boxes.
    page.locator('[data-testid=face-item][data-index="1"] button').focus()
    page.keyboard.press("Enter")
    expect(page.locator('[data-testid=face-box][data-index="1"]')).to_have_class(
        re.compile("is-selected")
    )
    # The pointer path: click a box on the photo.
    chosen = 2
    page.locator(f'[data-testid=face-box][data-index="{chosen}"]').click()
    chosen_item = page.locator(f'[data-testid=face-item][data-index="{chosen}"]')
    expect(chosen_item.get_by_role("button")).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_test_id("face-box").and_(page.locator(".is-selected"))).to_have_count(1)

    page.get_by_label("Subject ID", exact=True).fill(subject)
    page.get_by_test_id("subject-metadata").fill('{"team": "research"}')
    page.get_by_test_id("enroll-button").click()
    expect(page.get_by_test_id("notice-title")).to_have_text(
        f"Enrolled face {chosen + 1} as “{subject}” in “{gallery}”."
    )
    row = page.locator(f'[data-testid=subject-row][data-subject-id="{subject}"]')
    expect(row).to_contain_text("1 face")
    expect(row).to_contain_text("team: research")

    page.get_by_test_id("identify-button").click()
    expect(chosen_item.get_by_test_id("face-label")).to_have_text(subject)
    expect(chosen_item.locator(".candidate.is-match")).to_contain_text(subject)
    for index in range(T1_FACES):
        box = page.locator(f'[data-testid=face-box][data-index="{index}"]')
        if index == chosen:
            expect(box).to_have_class(re.compile("is-match"))
            continue
        expect(box).to_have_class(re.compile("is-unknown"))
        item = page.locator(f'[data-testid=face-item][data-index="{index}"]')
        expect(item.get_by_test_id("face-label")).to_have_text("unknown")
    expect(page.get_by_test_id("faces-summary")).to_contain_text("1 known · 5 unknown")

    page.get_by_role("button", name="Dismiss").click()
    screenshot(page, "identify-desktop")
    page.set_viewport_size(PHONE)
    expect(page.get_by_test_id("face-box")).to_have_count(T1_FACES)
    screenshot(page, "identify-phone")
    page.emulate_media(color_scheme="dark")
    screenshot(page, "identify-phone-dark")


def test_a_file_that_is_no_image_gets_a_readable_message(page: Page) -> None:
    page.get_by_test_id("photo-input").set_input_files(
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a photo at all\n" * 8}
    )
    notice = page.get_by_test_id("notice")
    expect(notice).to_have_attribute("data-kind", "error")
    expect(page.get_by_test_id("notice-title")).to_have_text(
        "This file is not a supported image. "
        "Use a JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC or AVIF photo."
    )
    expect(page.get_by_test_id("notice-detail")).to_contain_text("code: unsupported_image_format")
    expect(page.get_by_test_id("face-box")).to_have_count(0)
    expect(page.get_by_test_id("stage")).to_contain_text("Drop a photo here")
    screenshot(page, "error-desktop", full_page=False)


def test_a_network_failure_gets_a_message(page: Page, t1: Path) -> None:
    page.route("**/api/v1/analyze", lambda route: route.abort("connectionrefused"))
    page.get_by_test_id("photo-input").set_input_files(t1)
    expect(page.get_by_test_id("notice-title")).to_have_text(
        "The service could not be reached. Check the connection and try again."
    )
    expect(page.get_by_test_id("notice-detail")).to_contain_text("code: network_error")


def documented_error_codes() -> list[str]:
    """Every `code` in the error table of docs/rest-api.md."""
    doc = (REPO / "docs" / "rest-api.md").read_text()
    rows = re.findall(r"^\| (?:4|5)\d\d \|(.*)\|$", doc, re.MULTILINE)
    # Parentheses name a code's details (`errors`, `dependency`), not codes.
    rows = [re.sub(r"\([^)]*\)", "", row) for row in rows]
    return sorted({code for row in rows for code in re.findall(r"`([a-z_]+)`", row)})


def test_every_documented_error_code_has_its_own_sentence(page: Page) -> None:
    codes = documented_error_codes()
    assert {"no_face", "face_quality_too_low", "rate_limited", "queue_full"} <= set(codes)
    titles = page.evaluate(
        """async (codes) => {
            const { describeError } = await import("/messages.js");
            const title = (code, problem = {}, retryAfter = null) =>
                describeError({ code, status: 400, problem, retryAfter }).title;
            return {
                ...Object.fromEntries(codes.map((code) => [code, title(code)])),
                gate: title("face_quality_too_low", { gate: "min_face_size", value: "20.5",
                                                      limit: "32" }),
                dependency: title("dependency_unavailable", { dependency: "embed" }, 5),
            };
        }""",
        codes,
    )
    generic = [code for code in codes if titles[code] == "The request failed (HTTP 400)."]
    assert not generic, f"no sentence for {generic}"
    assert titles["no_face"] == "No face was found in this photo."
    assert "too small (20.5 px; at least 32 px needed)" in titles["gate"]
    assert titles["dependency"] == (
        "The face recognition service is unavailable; try again in 5 s."
    )


def test_a_camera_frame_is_captured_and_analyzed(page: Page) -> None:
    page.get_by_role("button", name="Use camera").click()
    expect(page.locator("#camera-video")).to_be_visible()
    expect(page.get_by_role("button", name="Capture")).to_be_enabled()  # once the video plays
    with page.expect_request("**/api/v1/analyze") as request:
        page.get_by_role("button", name="Capture").click()
    assert request.value.method == "POST"
    # The synthetic camera films no one.
    expect(page.get_by_test_id("notice-title")).to_have_text("No face was found in this photo.")
    expect(page.locator("#camera-video")).to_be_hidden()
    expect(page.locator("#photo-img")).to_be_visible()
    assert page.evaluate("document.getElementById('camera-video').srcObject") is None


def test_verify_two_photos_and_a_photo_against_a_subject(
    page: Page, gateway_service: ServiceProcess, t1: Path
) -> None:
    gallery = unique("verify")
    create_gallery(gateway_service, gallery)
    enroll(gateway_service, gallery, "grace", t1, 0)  # index 0 is the largest face
    page.reload()
    page.get_by_test_id("gallery-select").select_option(gallery)

    page.get_by_test_id("verify-a-input").set_input_files(t1)
    page.get_by_test_id("verify-b-input").set_input_files(t1)
    page.get_by_test_id("verify-button").click()
    expect(page.get_by_test_id("verify-decision")).to_have_text("Same person")
    similarity = float(page.get_by_test_id("verify-similarity").inner_text())
    assert similarity > 0.99
    expect(page.locator("#verify-a [data-testid=face-box]")).to_have_count(1)
    expect(page.locator("#verify-b [data-testid=face-box]")).to_have_count(1)

    page.get_by_text("Subject", exact=True).click()
    page.get_by_label("Subject ID in the selected gallery").fill("grace")
    page.get_by_test_id("verify-button").click()
    expect(page.get_by_test_id("verify-decision")).to_have_text("Same person")
    screenshot(page, "verify-desktop", page.locator("#verify"))


def test_subjects_paginate_delete_and_the_api_key_is_sent(
    page: Page, gateway_service: ServiceProcess, t1: Path
) -> None:
    gallery = unique("subjects")
    create_gallery(gateway_service, gallery)
    subjects = [f"person-{n:02d}" for n in range(23)]
    for subject in subjects:
        enroll(gateway_service, gallery, subject, t1, 0)

    page.locator("#settings summary").click()
    page.get_by_test_id("api-key").fill("test-key-123")
    page.get_by_test_id("api-key").press("Tab")
    page.reload()
    expect(page.get_by_test_id("api-key")).to_have_value("test-key-123")
    with page.expect_request(re.compile(r"/api/v1/galleries/[^/]+/subjects")) as request:
        page.get_by_test_id("gallery-select").select_option(gallery)
    assert request.value.headers.get("x-api-key") == "test-key-123"

    rows = page.get_by_test_id("subject-row")
    expect(rows).to_have_count(20)
    page.get_by_test_id("subjects-more").click()
    expect(rows).to_have_count(len(subjects))
    expect(page.get_by_test_id("subjects-more")).to_be_hidden()

    victim = page.locator('[data-testid=subject-row][data-subject-id="person-00"]')
    victim.get_by_test_id("subject-delete").click()
    page.get_by_test_id("confirm-cancel").click()
    expect(rows).to_have_count(len(subjects))
    victim.get_by_test_id("subject-delete").click()
    expect(page.get_by_role("dialog")).to_contain_text("Delete “person-00”?")
    screenshot(page, "confirm-delete", full_page=False)
    page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_test_id("notice-title")).to_have_text("Deleted “person-00” (1 face).")
    expect(rows).to_have_count(len(subjects) - 1)
    reply = httpx.get(
        f"{gateway_service.url}/api/v1/galleries/{gallery}/subjects/person-00", timeout=30
    )
    assert reply.status_code == 404
    assert reply.json()["code"] == "subject_not_found"


def test_keyboard_focus_is_kept_and_unaddressable_subject_ids_are_refused(
    page: Page, gateway_service: ServiceProcess, t1: Path
) -> None:
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()

    gallery = unique("keys")
    create_gallery(gateway_service, gallery)
    page.reload()
    page.get_by_test_id("gallery-select").select_option(gallery)
    page.get_by_test_id("photo-input").set_input_files(t1)
    expect(page.get_by_test_id("face-item")).to_have_count(T1_FACES)

    # Identify in an empty gallery says why every face is unknown; the focus stays put.
    identify = page.get_by_test_id("identify-button")
    identify.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("notice-title")).to_have_text(
        f"No one is enrolled in “{gallery}” yet, so every face is unknown."
    )
    expect(identify).to_be_focused()

    # "." and ".." would be resolved away by the browser: another address, another action.
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url))
    page.locator('[data-testid=face-item][data-index="0"] button').press("Enter")
    page.get_by_label("Subject ID", exact=True).fill("..")
    page.get_by_test_id("enroll-button").press("Enter")
    expect(page.get_by_test_id("notice-detail")).to_contain_text("code: unaddressable_subject_id")
    assert not [url for url in sent if "/subjects/" in url]

    # A photo in a verify slot can be replaced without dragging (phones, keyboards).
    page.get_by_test_id("verify-a-input").set_input_files(t1)
    change = page.get_by_role("button", name="Change the first photo")
    expect(change).to_be_visible()
    page.get_by_test_id("verify-a-input").evaluate(
        "(input) => input.addEventListener('click', (event) => {"
        "  event.preventDefault(); input.dataset.picked = 'yes'; })"
    )
    change.press("Enter")
    expect(page.get_by_test_id("verify-a-input")).to_have_attribute("data-picked", "yes")

    # A photo dropped beside the drop zones does not replace the page.
    dropped_beside = page.evaluate(
        """() => {
            const files = new DataTransfer();
            files.items.add(new File(["x"], "photo.jpg", { type: "image/jpeg" }));
            const drop = new DragEvent(
                "drop", { dataTransfer: files, bubbles: true, cancelable: true });
            document.querySelector("footer").dispatchEvent(drop);
            return drop.defaultPrevented;
        }"""
    )
    assert dropped_beside


def test_api_docs_render_offline(browser: Browser, gateway_service: ServiceProcess) -> None:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    outside: list[str] = []
    page.on(
        "request",
        lambda request: (
            outside.append(request.url) if not request.url.startswith(gateway_service.url) else None
        ),
    )
    page.goto(f"{gateway_service.url}/api/docs")
    expect(page.locator(".opblock").first).to_be_visible(timeout=20_000)
    assert page.locator(".opblock").count() >= 12  # every operation of the OpenAPI document
    assert not page.get_by_text("Unable to render this definition").count()
    screenshot(page, "api-docs")
    context.close()
    assert not outside, f"the docs page reached outside the gateway: {outside}"
