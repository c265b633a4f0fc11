"""The page in real headless Chromium (Debian's chromium + chromium-driver, via Selenium).

Scans are uploaded through the page's file input, as a user picking files would, and the
result is read from the DOM. The screenshot shows only inputs made here or shipped with packages
(a brain slice of nibabel's example EPI volume, a Shepp-Logan phantom, pydicom's MR_small.dcm,
a text file), never a dataset image. It goes to
the test's temporary folder, and to docs/serve_page.png (the README's figure) only when
BRAINMRI_UPDATE_DOCS=1 is set, so a test run leaves the checkout as it was.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from test_guard import _bench
from test_serve import RunningServer, running_server, sample_images

from brainmri import CLASS_NAMES

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = REPO / "docs" / "serve_page.png"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1200,1100",
)  # fmt: skip

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (make test installs them as root)",
)


def shepp_logan(side: int = 256) -> np.ndarray:
    """The modified Shepp-Logan head phantom (Toft), as a uint8 plane with mild noise."""
    ellipses = [  # intensity, semi-axes a, b, centre x, y, angle (degrees)
        (1.0, 0.69, 0.92, 0, 0, 0), (-0.8, 0.6624, 0.874, 0, -0.0184, 0),
        (-0.2, 0.11, 0.31, 0.22, 0, -18), (-0.2, 0.16, 0.41, -0.22, 0, 18),
        (0.1, 0.21, 0.25, 0, 0.35, 0), (0.1, 0.046, 0.046, 0, 0.1, 0),
        (0.1, 0.046, 0.046, 0, -0.1, 0), (0.1, 0.046, 0.023, -0.08, -0.605, 0),
        (0.1, 0.023, 0.023, 0, -0.606, 0), (0.1, 0.023, 0.046, 0.06, -0.605, 0),
    ]  # fmt: skip
    y, x = np.mgrid[1 : -1 : side * 1j, -1 : 1 : side * 1j]
    img = np.zeros((side, side))
    for value, a, b, x0, y0, deg in ellipses:
        t = np.deg2rad(deg)
        xr = (x - x0) * np.cos(t) + (y - y0) * np.sin(t)
        yr = -(x - x0) * np.sin(t) + (y - y0) * np.cos(t)
        img[(xr / a) ** 2 + (yr / b) ** 2 <= 1] += value
    img += np.random.default_rng(0).normal(0, 0.01, img.shape)
    return np.uint8(np.clip(img / img.max(), 0, 1) * 255)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("page")) as srv:
        yield srv


@pytest.fixture()
def browser(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/")
    WebDriverWait(driver, 60).until(
        lambda d: "sha256" in d.find_element("id", "model").text, "model info not shown"
    )


def upload(driver, paths: list[Path], timeout: float = 240) -> list:
    """Pick files through the page's input; wait until every card has its final state."""
    from selenium.webdriver.support.ui import WebDriverWait

    before = len(driver.find_elements("css selector", ".scan"))
    driver.find_element("id", "picker").send_keys("\n".join(str(p) for p in paths))

    def settled(d):
        cards = d.find_elements("css selector", ".scan")
        if len(cards) < before + len(paths):
            return False
        if any(c.get_attribute("data-status") == "pending" for c in cards):
            return False
        return not d.find_elements("css selector", ".scan .pending")  # overlays loaded

    WebDriverWait(driver, timeout).until(settled, "the page did not finish the uploads")
    return driver.find_elements("css selector", ".scan")


def card_for(cards: list, name: str):
    (card,) = [c for c in cards if c.get_attribute("data-name") == name]
    return card


def epi_slice(folder: Path) -> Path:
    """A brain MRI slice shipped with nibabel (its example EPI volume), as a PNG in `folder`."""
    epi = folder / "nibabel_example4d_slice12.png"
    Image.fromarray(_bench("readme_figure").epi_slice(12)).save(epi)
    return epi


def pressed(card) -> list[str]:
    """The classes whose button is marked as the one whose map is shown."""
    buttons = card.find_elements("css selector", ".bar button.name")
    return [b.get_attribute("data-class") for b in buttons
            if b.get_attribute("aria-pressed") == "true"]  # fmt: skip


def image_bytes(driver, img) -> bytes:
    """The bytes the page shows in `img` (its object URL read back inside the page)."""
    import base64

    script = """
        const done = arguments[arguments.length - 1];
        fetch(arguments[0].src).then((r) => r.arrayBuffer()).then((buf) => {
          let text = "";
          for (const b of new Uint8Array(buf)) text += String.fromCharCode(b);
          done(btoa(text));
        }, (err) => done("error: " + err));
    """
    driver.set_script_timeout(30)
    encoded = driver.execute_async_script(script, img)
    assert not encoded.startswith("error"), encoded
    return base64.b64decode(encoded)


def test_page_classifies_a_benchmark_image(
    server: RunningServer, browser, benchmark_dir: Path
) -> None:
    cls, path = sample_images(benchmark_dir, per_class=1)[1]
    open_page(browser, server.url)
    assert "not for clinical use" in browser.find_element("id", "clinical").text.lower()
    cards = upload(browser, [path])
    card = card_for(cards, path.name)
    assert card.get_attribute("data-status") == "ok"
    assert card.find_element("css selector", ".label").text == cls
    bars = card.find_elements("css selector", ".bar")
    assert [b.get_attribute("data-class") for b in bars] == list(CLASS_NAMES)
    overlay = card.find_element("css selector", "img.overlay")
    assert browser.execute_script("return arguments[0].naturalWidth", overlay) > 0
    assert overlay.get_attribute("alt").startswith("Grad-CAM overlay")
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "method")).select_by_value("occlusion")
    cards = upload(browser, [path])
    overlay = cards[0].find_element("css selector", "img.overlay")  # newest first
    assert overlay.get_attribute("alt").startswith("Occlusion map")
    assert browser.execute_script("return arguments[0].naturalWidth", overlay) > 0


def test_page_shows_errors_and_warnings_and_saves_screenshot(
    server: RunningServer, browser, tmp_path: Path
) -> None:
    import pydicom

    phantom = tmp_path / "phantom.png"
    buf = io.BytesIO()
    Image.fromarray(shepp_logan()).save(buf, format="PNG")
    phantom.write_bytes(buf.getvalue())
    dicom = tmp_path / "MR_small.dcm"  # shipped with pydicom (never downloaded)
    shutil.copy(Path(pydicom.__file__).parent / "data" / "test_files" / "MR_small.dcm", dicom)
    text = tmp_path / "report.jpg"
    text.write_text("This is a text file, not a scan.\n")
    dot = tmp_path / "dot.png"
    Image.new("L", (1, 1)).save(dot)
    epi = epi_slice(tmp_path)

    open_page(browser, server.url)
    cards = upload(browser, [epi, phantom, dicom, text, dot])
    epi_card = card_for(cards, epi.name)
    assert epi_card.get_attribute("data-status") == "ok"  # docs/RESULTS.md section 16.19
    assert epi_card.find_element("css selector", ".label").text == "notumor"
    assert epi_card.find_element("css selector", ".used").text == "plain · crop auto"  # defaults
    overlay = epi_card.find_element("css selector", "img.overlay")
    assert browser.execute_script("return arguments[0].naturalWidth", overlay) > 0
    assert pressed(epi_card) == ["notumor"]  # the predicted class's map, shown by default
    text_card = card_for(cards, text.name)
    assert text_card.get_attribute("data-status") == "error"
    assert "not-an-image" in text_card.find_element("css selector", ".warning").text
    dot_card = card_for(cards, dot.name)
    assert dot_card.get_attribute("data-status") == "rejected"
    warning = dot_card.find_element("css selector", ".warning").text
    assert "does not look like a brain MRI" in warning and "tiny" in warning
    for name in (phantom.name, dicom.name):  # classified or refused: either way, said so
        card = card_for(cards, name)
        status = card.get_attribute("data-status")
        assert status in ("ok", "rejected")
        if status == "ok":
            assert card.find_element("css selector", ".label").text in CLASS_NAMES
        else:
            assert card.find_element("css selector", ".warning").text
    shot = SCREENSHOT if os.environ.get("BRAINMRI_UPDATE_DOCS") == "1" else tmp_path / "page.png"
    browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] > 600


def test_page_sends_its_options_and_shows_what_was_used(
    server: RunningServer, browser, tmp_path: Path
) -> None:
    """The options row goes with the upload (?tta=5&crop=off): the record says it was used; a
    value the API refuses (400) is shown on the card in the error style."""
    from selenium.webdriver.support.ui import Select

    epi = epi_slice(tmp_path)
    open_page(browser, server.url)
    assert Select(browser.find_element("id", "tta")).first_selected_option.text == "plain"
    assert Select(browser.find_element("id", "crop")).first_selected_option.text == "auto"
    Select(browser.find_element("id", "tta")).select_by_value("5")
    Select(browser.find_element("id", "crop")).select_by_value("off")
    card = upload(browser, [epi])[0]
    assert card.get_attribute("data-status") == "ok"
    used = card.find_element("css selector", ".used")
    assert used.text == "5 views · crop off"
    assert (used.get_attribute("data-tta"), used.get_attribute("data-crop")) == ("5", "off")
    label = card.find_element("css selector", ".label").text
    assert pressed(card) == [label]  # the map shown is of the class TTA chose
    overlay = card.find_element("css selector", "img.overlay")
    assert browser.execute_script("return arguments[0].naturalWidth", overlay) > 0

    browser.execute_script(  # a value the page does not offer: the API's 400, on the card
        "const o = document.createElement('option'); o.value = '9'; o.text = '9 views';"
        "document.getElementById('tta').append(o);"
    )
    Select(browser.find_element("id", "tta")).select_by_value("9")
    card = upload(browser, [epi])[0]
    assert card.get_attribute("data-status") == "error"
    warning = card.find_element("css selector", ".warning").text
    assert "Refused by the server (400)." in warning and "tta must be one of" in warning


def test_page_keeps_its_options_across_a_reload(server: RunningServer, browser) -> None:
    """The options row is restored after a reload; a saved value the page no longer offers is
    ignored (the default stays)."""
    from selenium.webdriver.support.ui import Select

    def chosen(driver) -> tuple[str, ...]:
        ids = ("tta", "crop", "method")
        return tuple(Select(driver.find_element("id", i)).first_selected_option.get_attribute(
            "value") for i in ids)  # fmt: skip

    open_page(browser, server.url)
    assert chosen(browser) == ("1", "auto", "gradcam")
    Select(browser.find_element("id", "tta")).select_by_value("5")
    Select(browser.find_element("id", "crop")).select_by_value("off")
    Select(browser.find_element("id", "method")).select_by_value("occlusion")
    open_page(browser, server.url)
    assert chosen(browser) == ("5", "off", "occlusion")
    browser.execute_script("localStorage.setItem('brainmri.tta', '9')")
    open_page(browser, server.url)
    assert chosen(browser) == ("1", "off", "occlusion")


def test_page_shows_the_map_of_the_class_clicked(
    server: RunningServer, browser, tmp_path: Path
) -> None:
    """Each class in the bars is a button: clicking it (or Enter on it) replaces the overlay with
    that class's map and marks the class as the one shown."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    epi = epi_slice(tmp_path)
    open_page(browser, server.url)
    card = upload(browser, [epi])[0]
    assert card.get_attribute("data-status") == "ok"
    assert card.find_element("css selector", ".label").text == "notumor"
    assert pressed(card) == ["notumor"]
    caption = card.find_element("css selector", ".mapfor")
    assert caption.text == "Grad-CAM: notumor (predicted class)"
    overlay = card.find_element("css selector", "img.overlay")
    default = image_bytes(browser, overlay)

    def button(cls: str):
        (b,) = [b for b in card.find_elements("css selector", ".bar button.name")
                if b.get_attribute("data-class") == cls]  # fmt: skip
        return b

    def shown(cls: str) -> bytes:
        WebDriverWait(browser, 120).until(
            lambda _: pressed(card) == [cls], f"{cls} not marked as shown"
        )
        img = card.find_element("css selector", "img.overlay")
        assert img.get_attribute("data-class") == cls
        assert browser.execute_script("return arguments[0].naturalWidth", img) > 0
        return image_bytes(browser, img)

    button("glioma").click()
    glioma = shown("glioma")
    assert glioma != default and Image.open(io.BytesIO(glioma)).format == "PNG"
    assert caption.text == "Grad-CAM: glioma (predicted: notumor)"
    browser.save_screenshot(str(tmp_path / "class_map.png"))  # kept in pytest's temporary folder
    assert "shown" in button("glioma").find_element("xpath", "..").get_attribute("class")
    button("meningioma").send_keys(Keys.ENTER)  # a real button: the keyboard works too
    meningioma = shown("meningioma")
    assert meningioma not in (default, glioma)
    button("notumor").click()
    assert shown("notumor") == default

    pituitary = button("pituitary")  # a class the API does not know: its 400, one line
    browser.execute_script("arguments[0].dataset.class = 'tumour'", pituitary)
    pituitary.click()
    error = card.find_element("css selector", ".maperror")
    WebDriverWait(browser, 60).until(lambda _: error.is_displayed(), "no error shown")
    assert error.text.startswith("No map for tumour: class must be one of")
    assert error.text.endswith("(400).") and "\n" not in error.text
    assert pressed(card) == ["notumor"] and image_bytes(browser, overlay) == default


def test_openapi_page_renders_offline(server: RunningServer, browser) -> None:
    """/docs draws the API's operations from files the package serves itself (no CDN)."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/docs")
    WebDriverWait(browser, 60).until(
        lambda d: len(d.find_elements("css selector", ".opblock-summary-path")) >= 4,
        "Swagger UI did not render the operations",
    )
    paths = {e.text for e in browser.find_elements("css selector", ".opblock-summary-path")}
    assert {"/v1/predict", "/v1/explain", "/v1/model", "/healthz"} <= paths


def test_page_says_when_the_uploads_look_like_another_collection(
    server: RunningServer, browser, external_dir: Path, tmp_path: Path
) -> None:
    """After scans from an unseen collection the page shows the service's site check."""
    from selenium.webdriver.support.ui import WebDriverWait

    paths = [f for cls in ("glioma", "meningioma", "notumor")
             for f in sorted((external_dir / cls).iterdir())[::15][:10]]  # fmt: skip
    open_page(browser, server.url)
    assert not browser.find_element("id", "site").is_displayed()
    upload(browser, paths)
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element("id", "site").is_displayed(), "no site warning shown"
    )
    text = browser.find_element("id", "site").text
    assert "do not look like the images this model was checked on" in text
    site = httpx.get(server.url + "/v1/site").json()  # each upload counted once (not explain)
    assert f"The last {site['scored']} scans" in text and site["scored"] < 2 * len(paths)
    browser.save_screenshot(str(tmp_path / "site.png"))  # kept in pytest's temporary folder
