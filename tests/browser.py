"""A Snakemake report as a person sees it: opened in Debian's headless Chromium, each of its results shown the way
its own buttons show them, and what the browser then displays read back."""

import html
import json
import re
import subprocess
import tempfile
from pathlib import Path

from tests.debian import apt_install

CHROMIUM = "chromium-headless-shell"

# Appended to a copy of the report: after it loads, show each image and HTML result through the report's own app
# (app.setView, what a result's eye button calls), and note what was displayed: an image's decoded size, an HTML
# result's text as the browser rendered it in the report's iframe. The notes go in a <div id="shown"> that
# --dump-dom writes out.
SHOW_EACH_RESULT = """
<script>
window.addEventListener("load", () => setTimeout(async () => {
  const shown = {};
  const settle = () => new Promise(resolve => setTimeout(resolve, 500));
  for (const path of Object.keys(results)) {
    const mime = getResultMimeType(path);
    if (!mime.startsWith("image/") && mime !== "text/html") { continue; }
    app.setView({content: mime.startsWith("image/") ? "img" : "html", contentPath: results[path].data_uri,
                 resultPath: path});
    await settle();
    const uri = results[path].data_uri;
    if (mime.startsWith("image/")) {
      const image = [...document.querySelectorAll("img")].find(img => img.getAttribute("src") === uri);
      shown[path] = image ? {width: image.naturalWidth, height: image.naturalHeight} : null;
    } else {
      const frame = [...document.querySelectorAll("iframe")].find(f => f.getAttribute("src") === uri);
      shown[path] = frame && frame.contentDocument ? {text: frame.contentDocument.body.innerText} : null;
    }
  }
  const out = document.createElement("div");
  out.id = "shown";
  out.textContent = JSON.stringify(shown);
  document.body.appendChild(out);
}, 0));
</script>
"""


def install_chromium() -> None:
    apt_install((CHROMIUM,), (CHROMIUM,), "the report's browser test")


def shown_results(report: Path) -> dict:
    """{result path: {"width", "height"} of an image, or {"text"} of an HTML page, or None if it did not show}."""
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "report.html"
        head, tail = report.read_text().rsplit("</body>", 1)
        page.write_text(head + SHOW_EACH_RESULT + "</body>" + tail)
        # --disable-web-security: the script reads the report's iframes, whose data: pages have an origin of their
        # own; --virtual-time-budget: the page's timers run at once, and Chromium dumps the DOM after them.
        dumped = subprocess.run(
            [CHROMIUM, "--no-sandbox", "--disable-gpu", "--disable-web-security", f"--user-data-dir={folder}/profile",
             "--virtual-time-budget=60000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120)
    found = re.search(r'<div id="shown">(.*?)</div>', dumped.stdout, flags=re.S)
    if dumped.returncode != 0 or not found:
        raise AssertionError(f"Chromium did not show the report:\n{dumped.stderr[-3000:]}")
    return json.loads(html.unescape(found.group(1)))
