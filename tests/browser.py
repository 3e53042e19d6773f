"""A Snakemake report as a person sees it: opened in Debian's headless Chromium, each of its results shown the way
its own buttons show them, and what the browser then displays read back. And a live web app (MLflow's UI) opened the
same way, driven by a script in the page as a person's clicks would."""

import html
import json
import os
import re
import select
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench.harness.debian import apt_install

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


def page_script_value(url: str, script: str, timeout: float = 120):
    """Open `url` in headless Chromium and, once the page has loaded, run `script` in it: a JavaScript expression whose
    value (a Promise's once it resolves: the script waits for what it needs with the browser's own means, a
    MutationObserver, not a sleep) comes back, as JSON. The page is a live app with its own requests; Chromium is
    driven over its DevTools protocol on a pipe (--remote-debugging-pipe). On a timeout, the page's text is shown."""
    with tempfile.TemporaryDirectory() as folder, open(Path(folder) / "chromium.log", "w+") as log:
        commands, answers = _DevTools.launch(folder, log)
        devtools = _DevTools(commands, answers, time.monotonic() + timeout, log)
        try:
            target = devtools.send("Target.createTarget", url="about:blank")["targetId"]
            session = devtools.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            devtools.send("Page.enable", session=session)
            devtools.send("Page.navigate", session=session, url=url)
            devtools.event("Page.loadEventFired", session)
            try:
                answer = devtools.send("Runtime.evaluate", session=session, expression=script, awaitPromise=True,
                                       returnByValue=True)
            except TimeoutError:
                devtools.deadline = time.monotonic() + 10
                shown = devtools.send("Runtime.evaluate", session=session, expression="document.body.innerText",
                                      returnByValue=True)["result"].get("value", "")
                raise AssertionError(f"the script found no answer in {url} within {timeout} s; the page shows:\n"
                                     f"{shown[:3000]}") from None
            if "exceptionDetails" in answer:
                raise AssertionError(f"the script failed in {url}: {answer['exceptionDetails']}")
            return answer["result"].get("value")
        finally:
            devtools.close()


class _DevTools:
    """Chromium's DevTools protocol on a pipe: JSON messages, each ended by a NUL byte; commands to the browser's file
    descriptor 3, answers and events from its descriptor 4."""

    @staticmethod
    def launch(folder, log):
        """Chromium started with its pipes; returns (the process and the commands' descriptor, the answers')."""
        to_browser, commands = os.pipe()
        answers, from_browser = os.pipe()
        process = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser}', CHROMIUM, "--no-sandbox",
             "--disable-gpu", f"--user-data-dir={folder}/profile", "--window-size=1920,1080",
             "--remote-debugging-pipe", "about:blank"],
            pass_fds=(to_browser, from_browser), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True)
        os.close(to_browser)
        os.close(from_browser)
        return (process, commands), answers

    def __init__(self, commands, answers, deadline, log):
        (self.process, self.commands), self.answers = commands, answers
        self.deadline, self.log, self.buffer, self.events, self.last_id = deadline, log, b"", [], 0

    def send(self, method, session=None, **params) -> dict:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read()
            if answer.get("id") == self.last_id:
                if "error" in answer:
                    raise AssertionError(f"Chromium refused {method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def event(self, method, session) -> dict:
        """The first event `method` of `session` (kept while answers were awaited, or the next to come)."""
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    self.events.remove(event)
                    return event
            self.events.append(self._read())

    def _read(self) -> dict:
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.answers], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.answers, 1 << 16)
            if not chunk:
                self.log.seek(0)
                raise AssertionError(f"Chromium ended ({self.process.poll()}):\n{self.log.read()[-3000:]}")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self):
        os.killpg(self.process.pid, signal.SIGKILL)  # the browser and its renderers, in the group it was started in
        self.process.wait(timeout=60)
        os.close(self.commands)
        os.close(self.answers)
