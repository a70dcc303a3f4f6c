"""report.html in a real browser: headless Chromium (Debian's `chromium` package, which `make browser` and
.ci/run install) opens the exported report from disk with name resolution cut off, every image decodes and
is laid out, and each gallery shows as many frames as the test confusion matrix says. A screenshot of the
page is taken every time; a failure message names its file."""

import html
import json
import re
import shutil
import subprocess

import pytest

from nas.report.gallery import BORDERLINE, GALLERY_MAX

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic", "--host-resolver-rules=MAP * ~NOTFOUND",
]
# Added to a copy of the page only: report.html itself carries no script. After the load event it writes,
# into the DOM that --dump-dom prints, which images failed to decode or have no size, and the tiles per gallery.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const out = {
    images: images.length,
    broken: images.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.alt),
    unsized: images.filter((i) => i.getBoundingClientRect().width === 0).map((i) => i.alt),
    tiles: {},
  };
  document.querySelectorAll("section.gallery").forEach((s) => {
    out.tiles[s.dataset.kind] = s.querySelectorAll("figure.tile img").length;
  });
  const pre = document.createElement("pre");
  pre.id = "nas-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@pytest.fixture(scope="session")
def browser() -> str:
    """Chromium's path; asked for before the exported run, so a machine without it skips at once."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium on this machine: `make browser` installs Debian's chromium package (apt-get), "
                "as .ci/run does; where apt cannot install it, this test cannot run")


def _chromium(browser: str, profile, *args: str) -> str:
    proc = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_report_html_renders_every_image_and_the_expected_galleries(browser, exported_run, tmp_path):
    page = exported_run / "report" / "report.html"
    text = page.read_text()
    shot = tmp_path / "report.png"
    _chromium(browser, tmp_path / "profile-shot", "--window-size=1280,4000", f"--screenshot={shot}", page.as_uri())
    print(f"screenshot of {page}: {shot}")
    where = f"(see the screenshot {shot})"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000, f"blank screenshot {where}"

    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", PROBE + "</body>"))
    dom = _chromium(browser, tmp_path / "profile-dom", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="nas-check">(.*?)</pre>', dom, re.S)
    assert found, f"the probe script did not run {where}"
    seen = json.loads(html.unescape(found.group(1)))
    assert seen["broken"] == [] and seen["unsized"] == [], f"images that did not load or show: {seen} {where}"
    assert seen["images"] == text.count("<img") > 0, where

    card = json.loads((exported_run / "model_card.json").read_text())
    cm = card["metrics"]["test"]["confusion_matrix"]
    called = cm["tp"] + cm["fp"]
    expected = {"fp": min(cm["fp"], GALLERY_MAX), "fn": min(cm["fn"], GALLERY_MAX), "above": min(called, BORDERLINE),
                "below": min(cm["tn"] + cm["fn"], BORDERLINE)}
    assert seen["tiles"] == expected, f"tiles shown {seen['tiles']}, expected {expected} from {cm} {where}"
