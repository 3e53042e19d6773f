"""Stage `download`: the article parts of a Wikimedia dump, verified, resumable, published atomically.

A mirror is laid out as `<mirror>/<wiki>/<date>/dumpstatus.json` plus the dump files beside it, where `<mirror>` is an
http(s) URL, a `file://` URL or a local folder. `dumpstatus.json` lists, under the job `articlesdump`, every
`pages-articles{N}.xml-p...bz2` part with its size and sha1. The manifest step turns it into `manifest.json` (resolving
`latest` to a dated dump); each part is then downloaded as its own job.

Every part is downloaded under an exclusive lock of its own (`<part>.bz2.lock`), so two runs that share `resources/`
never write the same `.part` file: the second waits, then finds the verified file. Requests ask for the bytes as
stored (`Accept-Encoding: identity`), resume with `Range` and `If-Range` (a file that changed on the mirror is
fetched whole), and follow redirects only to the mirror's scheme, host and port unless `redirects_to_other_hosts`.

A mirror that wants credentials gets them from outside its URL, which reaches command lines and logs: a user and
password from `~/.netrc` (or the file the NETRC environment variable names), which requests reads for each host it
is sent to, and a token from the environment variable `download.token_env` names, sent as `Authorization: Bearer` to
the mirror's own scheme, host and port only, never to a host a redirect leads to. A mirror URL with credentials in it
(`https://user:password@host/`, `?token=...`) is refused. The manifest names each part by its path under the mirror,
and each download job joins it to the configured mirror.
"""

import hashlib
import html.parser
import json
import logging
import os
import re
import sys
import time
import urllib.parse
from pathlib import Path

import requests
import urllib3
from tqdm import tqdm

from bertpipe import BertpipeError, settings
from bertpipe.atomic import atomic_file, exclusive, publish_file
from bertpipe.redaction import redact
from bertpipe.settings import DownloadSettings, DumpSettings, mirror_credentials_fault
from bertpipe.stages import add_step
from bertpipe.tracking import Outcome

log = logging.getLogger(__name__)

ARTICLES_JOB = "articlesdump"
DATE_PATTERN = re.compile(r"^\d{8}$")
PART_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*-pages-articles[A-Za-z0-9_.-]*\.bz2$")  # a plain name, no path
MAX_REDIRECTS = 5
CHUNK_BYTES = 1 << 20
# How many dated dumps `latest` looks at, newest first, before it gives up finding a finished one.
LATEST_CANDIDATES = 5
DEFAULT_PORTS = {"http": 80, "https": 443}
CREDENTIALS_HINT = ("check the mirror's credentials: a user and password in ~/.netrc (or the file NETRC names), or "
                    "the token in the variable download.token_env names")


class NotFound(BertpipeError):
    pass


class TransientError(Exception):
    """A failure worth retrying: connection dropped, timeout, 5xx, 408, 429."""


def join_url(base: str, *parts: str) -> str:
    """`base` with `parts` appended to its path; its query stays at the end."""
    scheme, netloc, path, query, fragment = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit((scheme, netloc, "/".join([path.rstrip("/"), *parts]), query, fragment))


def local_path(url: str):
    """The filesystem path of a `file://` URL or a plain path; None for http(s)."""
    if url.startswith(("http://", "https://")):
        return None
    if url.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    return Path(url)


def check_mirror(mirror: str, download) -> None:
    """Refuse a mirror URL with credentials in it, and a token variable (`download.token_env`) that is not set,
    before any request."""
    fault = mirror_credentials_fault(mirror, "--mirror", "--token-env")
    if fault:
        raise BertpipeError(fault)
    mirror_token(download)


def mirror_token(download):
    """The mirror's token: the value of the environment variable that `download.token_env` names; None without
    one."""
    name = download.token_env
    if name is None:
        return None
    token = os.environ.get(name)
    if not token:
        raise BertpipeError(f"the environment variable {name}, which download.token_env (--token-env) names, is not "
                            f"set or empty: export {name} with the mirror's token, or set download.token_env to null")
    return token


class _Bearer(requests.auth.AuthBase):
    """`Authorization: Bearer <token>` on a request. As an auth, not a plain header, so that requests does not put a
    ~/.netrc password in its place."""

    def __init__(self, token: str):
        self.token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


def _origin(url: str) -> tuple:
    """(scheme, host, port) of `url`, the port made explicit (`https://h` and `https://h:443` are one origin) and
    userinfo aside."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, parts.hostname, parts.port or DEFAULT_PORTS.get(scheme)


def http_get(url: str, download, headers=None, stream=False) -> requests.Response:
    """GET `url` (under the mirror) for the bytes as stored, with `download`'s timeout (settings.DownloadSettings),
    following at most MAX_REDIRECTS redirects: to the same scheme, host and port, or with
    `download.redirects_to_other_hosts` to any host but never from https to http. The mirror's token goes only to
    the scheme, host and port of `url`; a request without it carries the ~/.netrc login of the host it goes to, if
    there is one (requests reads the file)."""
    headers = {"Accept-Encoding": "identity", **(headers or {})}
    token = mirror_token(download)
    mirror = _origin(url)
    for _ in range(MAX_REDIRECTS + 1):
        auth = _Bearer(token) if token and _origin(url) == mirror else None
        response = requests.get(url, headers=headers, auth=auth, timeout=download.timeout_seconds, stream=stream,
                                allow_redirects=False)
        if not response.is_redirect:
            return response
        target = urllib.parse.urljoin(url, response.headers["Location"])
        response.close()
        here, there = _origin(url), _origin(target)
        downgrade = here[0] == "https" and there[0] != "https"
        if downgrade or (not download.redirects_to_other_hosts and here != there):
            raise BertpipeError(f"{url} redirects to {target}, " + ("from https to http, which is never followed"
                                if downgrade else "another scheme, host or port; set "
                                                  "download.redirects_to_other_hosts to follow it"))
        url = target
    raise BertpipeError(f"{url}: more than {MAX_REDIRECTS} redirects")


def fetch_small(url: str, download) -> bytes:
    """The whole body of a small resource (dumpstatus.json, a folder index); `download`: settings.DownloadSettings."""
    path = local_path(url)
    if path is not None:
        if not path.exists():
            raise NotFound(f"{path}: not found")
        if path.is_dir():
            return "".join(f'<a href="{p.name}/">' for p in path.iterdir() if p.is_dir()).encode()
        return path.read_bytes()
    try:
        response = http_get(url, download)
    except requests.RequestException as error:
        raise BertpipeError(f"{url}: cannot be fetched ({error}); check the mirror URL and the network") from error
    if response.status_code == 404:
        raise NotFound(f"{url}: 404 Not Found")
    if response.status_code in (401, 403):
        raise BertpipeError(f"{url}: HTTP {response.status_code} {response.reason}; {CREDENTIALS_HINT}")
    if response.status_code != 200:
        raise BertpipeError(f"{url}: HTTP {response.status_code} {response.reason}")
    return response.content


class _LinkParser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.links.extend(value for name, value in attrs if name == "href" and value)


def dated_dumps(mirror: str, wiki: str, download) -> list:
    """The YYYYMMDD dump folders listed in the mirror's index of `wiki`, newest first."""
    parser = _LinkParser()
    parser.feed(fetch_small(join_url(mirror, wiki, ""), download).decode("utf-8", "replace"))
    dates = {link.strip("/").rsplit("/", 1)[-1] for link in parser.links}
    return sorted((d for d in dates if DATE_PATTERN.match(d)), reverse=True)


def _articles_job(status_url: str, raw: bytes) -> dict:
    try:
        job = json.loads(raw)["jobs"][ARTICLES_JOB]
        job["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise BertpipeError(
            f"{status_url}: not a dumpstatus.json with a job '{ARTICLES_JOB}' listing files ({error!r})"
        ) from error
    return job


class _Unfinished(BertpipeError):
    pass


def _finished_job(mirror, wiki, date, download):
    status_url = join_url(mirror, wiki, date, "dumpstatus.json")
    job = _articles_job(status_url, fetch_small(status_url, download))
    if job.get("status") != "done":
        raise _Unfinished(f"{status_url}: job '{ARTICLES_JOB}' is {job.get('status')!r}, not 'done'")
    return status_url, job


def resolve_dump(mirror: str, wiki: str, date: str, download) -> tuple:
    """(date folder, dumpstatus URL, articlesdump job) of a finished dump.

    `latest` takes `<wiki>/latest/dumpstatus.json` where the mirror has one, else the newest finished dated dump.
    """
    if date != "latest":
        if not DATE_PATTERN.match(date):
            raise BertpipeError(f"dump date {date!r}: expected 'latest' or YYYYMMDD")
        return date, *_finished_job(mirror, wiki, date, download)
    try:
        return date, *_finished_job(mirror, wiki, date, download)
    except NotFound:
        pass
    unfinished = []
    for candidate in dated_dumps(mirror, wiki, download)[:LATEST_CANDIDATES]:
        try:
            return candidate, *_finished_job(mirror, wiki, candidate, download)
        except _Unfinished as error:
            unfinished.append(str(error))
    raise BertpipeError(
        f"{join_url(mirror, wiki)}/: no finished dump among the newest dated folders "
        f"({'; '.join(unfinished) or 'none listed'}); "
        "set dump.date to a finished dump's YYYYMMDD"
    )


def part_name(filename: str) -> str:
    """The name a part goes by in the workflow: its file name without `.bz2`."""
    return filename.removesuffix(".bz2")


def write_manifest(mirror: str, wiki: str, date: str, out, download) -> dict:
    """Resolve the dump and write `manifest.json`: one entry per article part with its path under the mirror, size
    and sha1."""
    check_mirror(mirror, download)
    folder, status_url, job = resolve_dump(mirror, wiki, date, download)
    parts = {}
    for filename, meta in sorted(job["files"].items()):
        if not filename.endswith(".bz2"):
            continue
        if not PART_FILE.match(filename):
            raise BertpipeError(f"{redact(status_url)}: {filename!r} is not a plain file name of a pages-articles "
                                "part (<wiki>-<date>-pages-articles...bz2); refusing a manifest that would write "
                                "outside the dump's folder")
        if "sha1" not in meta:
            raise BertpipeError(f"{status_url}: file {filename} has no sha1; cannot verify it")
        parts[part_name(filename)] = {
            "file": filename,
            "path": f"{wiki}/{folder}/{filename}",
            "size": meta.get("size"),
            "sha1": meta["sha1"],
        }
    if not parts:
        raise BertpipeError(f"{status_url}: job '{ARTICLES_JOB}' lists no .bz2 parts")
    manifest = {
        "mirror": redact(mirror),
        "wiki": wiki,
        "requested_date": date,
        "date": folder,
        "updated": job.get("updated"),
        "dumpstatus": redact(status_url),
        "parts": parts,
    }
    with atomic_file(out) as temp:
        temp.write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("%s: %d parts of %s/%s", out, len(parts), wiki, folder)
    return manifest


def read_manifest(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise BertpipeError(f"{path}: unreadable manifest ({error}); rerun the download manifest step") from error


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _progress(name: str, total, initial: int):
    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, mininterval=0.5 if interactive else 30, disable=None if interactive else False)


def _copy_local(source: Path, partial: Path, bar) -> None:
    if not source.exists():
        raise NotFound(f"{source}: not found")
    with open(source, "rb") as src, open(partial, "ab") as dst:
        src.seek(dst.tell())
        while chunk := src.read(CHUNK_BYTES):
            dst.write(chunk)
            bar.update(len(chunk))


def _fetch_http(url: str, partial: Path, download, bar) -> None:
    """Append the rest of `url` to `partial`, asking for a Range when it already holds bytes, if the file on the
    mirror is still the one they came from (If-Range with its ETag or Last-Modified, kept in `<partial>.validator`)."""
    offset = partial.stat().st_size if partial.exists() else 0
    validator_file = partial.with_name(partial.name + ".validator")
    validator = validator_file.read_text() if offset and validator_file.is_file() else None
    headers = {"Range": f"bytes={offset}-", **({"If-Range": validator} if validator else {})} if offset else {}
    try:
        with http_get(url, download, headers, stream=True) as response:
            if response.status_code == 404:
                raise NotFound(f"{url}: 404 Not Found; check wiki, date and mirror in the config")
            if response.status_code in (401, 403):
                raise BertpipeError(f"{url}: HTTP {response.status_code} {response.reason}; {CREDENTIALS_HINT}")
            if response.status_code == 416:
                # The server has nothing from `offset` on. Where the length it gives (`Content-Range: bytes
                # */LENGTH`) is the partial file's, that file is whole and its sha1 check decides; otherwise it is
                # not the server's file (longer, or another one), and the next attempt starts from byte 0.
                if response.headers.get("Content-Range") == f"bytes */{offset}":
                    return
                partial.unlink()
                validator_file.unlink(missing_ok=True)
                raise TransientError(f"{url}: range {offset}- not satisfiable (Content-Range "
                                     f"{response.headers.get('Content-Range')!r}); the partial file was deleted")
            if response.status_code >= 500 or response.status_code in (408, 429):
                raise TransientError(f"{url}: HTTP {response.status_code} {response.reason}")
            if response.status_code not in (200, 206):
                raise BertpipeError(f"{url}: HTTP {response.status_code} {response.reason}")
            if offset and response.status_code == 200:
                log.warning("%s: the server sent the whole file (it changed, or ignores Range); downloading from the "
                            "start", url)
                offset = 0
                bar.reset()
            elif response.status_code == 206:
                served_from = response.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
                if served_from != str(offset):
                    raise TransientError(f"{url}: asked for bytes from {offset}, got Content-Range {served_from!r}")
            if not offset:
                validator_file.write_text(response.headers.get("ETag") or response.headers.get("Last-Modified") or "")
            with open(partial, "r+b" if offset else "wb") as f:
                f.seek(offset)
                f.truncate()
                # read1 hands over whatever has arrived, so the bytes received before a dropped connection
                # reach the file and are not fetched again (iter_content would drop a partly filled chunk).
                while chunk := response.raw.read1(CHUNK_BYTES):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
        raise TransientError(f"{url}: {error}") from error


def download_part(manifest_path, part: str, out, download, mirror: str) -> Path:
    """Download one part listed in the manifest from `mirror` to `out`, resuming `<out>.part`, verifying sha1 before
    publishing; `download` (settings.DownloadSettings) says how often and how long to retry."""
    manifest = read_manifest(manifest_path)
    if part not in manifest["parts"]:
        raise BertpipeError(f"{manifest_path}: no part named {part!r}; known: {', '.join(manifest['parts'])}")
    entry = manifest["parts"][part]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    check_mirror(mirror, download)
    with exclusive(out.with_name(out.name + ".lock")):  # another run downloading this part holds it until it is done
        if out.is_file() and entry["sha1"] == sha1_of(out):
            log.info("%s: already downloaded and verified (by another run)", out)
            return out
        return _download(entry, out, download, join_url(mirror, entry["path"]))


def _download(entry: dict, out: Path, download, url: str) -> Path:
    retries, backoff = download.retries, download.backoff_seconds
    # The partial file keeps a fixed name, unlike atomic_file's temp names, so that a rerun resumes it.
    partial = out.with_name(out.name + ".part")
    size = entry["size"]
    if size is not None and partial.exists() and partial.stat().st_size > size:
        partial.unlink()
    source = local_path(url)
    for attempt in range(retries + 1):
        have = partial.stat().st_size if partial.exists() else 0
        with _progress(entry["file"], size, have) as bar:
            try:
                if size is None or have < size:
                    if source is not None:
                        _copy_local(source, partial, bar)
                    else:
                        _fetch_http(url, partial, download, bar)
                have = partial.stat().st_size
                if size is not None and have != size:
                    raise TransientError(f"{url}: got {have} of {size} bytes")
                break
            except TransientError as error:
                if attempt == retries:
                    kept = partial.stat().st_size if partial.exists() else 0
                    raise BertpipeError(
                        f"{url}: failed after {retries + 1} attempts ({error}); "
                        + (f"the {kept} bytes in {partial} are kept and the next run resumes from them" if kept else
                           "no partial file is kept: the next run downloads the part from the start")
                    ) from error
                delay = backoff * 2**attempt
                log.warning("%s (attempt %d of %d); retrying in %.1f s", error, attempt + 1, retries + 1, delay)
                time.sleep(delay)  # backoff between attempts, not synchronisation
    digest = sha1_of(partial)
    if digest != entry["sha1"]:
        partial.unlink()
        partial.with_name(partial.name + ".validator").unlink(missing_ok=True)
        raise BertpipeError(
            f"{out.name}: sha1 mismatch: the dump lists {entry['sha1']}, the downloaded file has {digest}; "
            "the download was deleted; rerun to fetch it again, and if it persists try another mirror"
        )
    publish_file(partial, out)
    partial.with_name(partial.name + ".validator").unlink(missing_ok=True)
    log.info("%s: %d bytes, sha1 verified", out, out.stat().st_size)
    return out


def add_arguments(parser) -> None:
    steps = parser.add_subparsers(dest="step", required=True)

    manifest = add_step(steps, "manifest", "resolve the dump (dumpstatus.json) into manifest.json")
    settings.add_arguments(manifest, DumpSettings)
    settings.add_arguments(manifest, DownloadSettings, only=("timeout_seconds", "redirects_to_other_hosts",
                                                              "token_env"))
    manifest.add_argument("--out", required=True, help="manifest.json to write")
    manifest.set_defaults(run=run_manifest, label="out", inputs=())

    part = add_step(steps, "part", "download one part listed in the manifest")
    part.add_argument("--manifest", required=True)
    part.add_argument("--part", required=True, help="part name: its file name without .bz2")
    part.add_argument("--out", required=True)
    settings.add_arguments(part, DumpSettings, only=("mirror",))
    settings.add_arguments(part, DownloadSettings)
    part.set_defaults(run=run_part, label="part", inputs=("manifest",))


def run_manifest(args, _) -> Outcome:
    download = settings.from_args(DownloadSettings, args, retries=DownloadSettings.retries,
                                   backoff_seconds=DownloadSettings.backoff_seconds)
    manifest = write_manifest(args.mirror, args.wiki, args.date, args.out, download)
    return Outcome(metrics={"parts": len(manifest["parts"]),
                            "bytes": sum(part["size"] or 0 for part in manifest["parts"].values())},
                   tags={"dump.date": manifest["date"]}, artifacts=[(args.out, None)])


def run_part(args, _) -> Outcome:
    started = time.perf_counter()
    path = download_part(args.manifest, args.part, args.out, settings.from_args(DownloadSettings, args), args.mirror)
    seconds = time.perf_counter() - started
    size = path.stat().st_size
    return Outcome(metrics={"bytes": size, "seconds": seconds,
                            "megabytes_per_second": size / 2**20 / max(seconds, 1e-9)})
