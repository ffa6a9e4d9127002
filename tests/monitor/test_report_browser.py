"""The report in a real browser: headless Chromium renders it, every inline image decodes and
the screenshot is not blank. Skipped when Chromium is not installed; with CI=true it fails instead
(.ci/run installs it)."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from mlops_ray.monitor.report import write_report
from tests.support.ci import missing
from tests.monitor.test_report import make_ctx

pytestmark = [pytest.mark.slow]

TIMEOUT_S = 120
# Injected into a copy of the page only: the report itself has no scripts.
PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; }).length;
  var out = document.createElement("div");
  out.id = "probe";
  out.textContent = "images=" + imgs.length + " broken=" + broken;
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not exe:
        missing("headless Chromium not installed (Debian package 'chromium'; .ci/run installs it)")
    return exe


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return write_report(make_ctx(), str(tmp_path_factory.mktemp("report") / "report.html"))


def _run(exe: str, tmp, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={tmp}/profile", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)


def test_screenshot_is_not_blank(chromium, report, tmp_path):
    out = tmp_path / "shot.png"
    r = _run(chromium, tmp_path, f"--screenshot={out}", "--window-size=1280,4000", f"file://{report}")
    assert out.exists(), f"no screenshot (rc {r.returncode}): {r.stderr[-2000:]}"
    import matplotlib.image as mpimg
    pixels = mpimg.imread(str(out))
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000, pixels.shape
    assert pixels[..., :3].std() > 0.05                 # not one colour
    # the dark header band and white section cards are both there
    rows = pixels[..., :3].mean(axis=(1, 2))
    assert rows.min() < 0.4 and rows.max() > 0.9


def test_every_image_decodes_in_the_browser(chromium, report, tmp_path):
    page = open(report, encoding="utf-8").read()
    copy = tmp_path / "probe.html"
    copy.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    r = _run(chromium, tmp_path, "--virtual-time-budget=5000", "--dump-dom", f"file://{copy}")
    m = re.search(r'<div id="probe">images=(\d+) broken=(\d+)</div>', r.stdout)
    assert m, f"probe did not run (rc {r.returncode}): {r.stderr[-2000:]}"
    total, broken = int(m.group(1)), int(m.group(2))
    assert total == page.count("<img") > 0
    assert broken == 0
