"""Write the bundled loose-JSON sample: the docstrings of CPython's standard library.

One document per module in MODULES: the module docstring, then the docstrings of its public
classes, functions and methods (the names in ``__all__`` where defined, else the public names
defined in the module), each cleaned with ``inspect.cleandoc``. Doctest examples and reST
literal blocks ("Example::" and the indented block under it) are dropped, each docstring
paragraph becomes one line, paragraphs are separated by a blank line, and docstrings under
MIN_DOC characters and documents under MIN_TEXT characters are left out.

The documents, sorted by id (the dotted module name), go round-robin into four files
``stdlib-docs-{1..4}.jsonl``, one ``{"id": ..., "text": ...}`` object per line (Megatron-LM's
``--loose-json`` format). Standard library only; the text depends on the Python version (and platform).

    python3 data/ownjson/make_sample.py
"""

import importlib
import inspect
import json
import re
import sys
import warnings
from pathlib import Path

MIN_DOC = 40  # characters; shorter docstrings are dropped
MIN_TEXT = 500  # characters; shorter documents are dropped
N_FILES = 4
OUT = Path(__file__).resolve().parent

# Pure-Python, prose-rich modules whose import has no side effects (all in CPython 3.9 to 3.13).
MODULES = sorted(
    """
    abc argparse ast asyncio.base_events asyncio.events asyncio.futures asyncio.locks
    asyncio.protocols asyncio.queues asyncio.runners asyncio.selector_events asyncio.sslproto
    asyncio.staggered asyncio.streams asyncio.tasks asyncio.transports base64 bdb bz2 cProfile
    calendar cmd code codecs codeop collections collections.abc colorsys compileall
    concurrent.futures concurrent.futures.process concurrent.futures.thread configparser
    contextlib contextvars copy csv ctypes dataclasses datetime dbm dbm.dumb decimal difflib dis
    doctest email email.base64mime email.charset email.errors email.feedparser email.generator
    email.header email.headerregistry email.iterators email.message email.mime.multipart
    email.parser email.policy email.quoprimime email.utils enum filecmp fileinput fnmatch
    fractions ftplib functools getopt getpass glob graphlib gzip hashlib heapq hmac html
    html.parser http.client http.cookiejar http.cookies http.server imaplib importlib
    importlib.abc importlib.metadata importlib.resources importlib.util inspect io ipaddress
    json json.decoder json.encoder linecache locale logging logging.config logging.handlers lzma
    mailbox mimetypes modulefinder multiprocessing.connection multiprocessing.forkserver
    multiprocessing.managers multiprocessing.pool multiprocessing.process
    multiprocessing.reduction multiprocessing.shared_memory numbers operator optparse os os.path
    pathlib pdb pickle pickletools pkgutil platform plistlib poplib pprint profile pstats
    py_compile pyclbr pydoc queue quopri random re runpy sched secrets selectors shelve shutil
    signal smtplib socket socketserver sqlite3 ssl statistics string struct subprocess symtable
    sysconfig tabnanny tarfile tempfile textwrap threading timeit tokenize trace traceback
    tracemalloc types typing unittest unittest.case unittest.loader unittest.mock
    unittest.result unittest.suite unittest.util urllib.error urllib.parse urllib.request
    urllib.response urllib.robotparser uuid venv warnings wave weakref webbrowser
    wsgiref.handlers wsgiref.headers wsgiref.simple_server wsgiref.util wsgiref.validate xml.dom
    xml.dom.expatbuilder xml.dom.minidom xml.etree.ElementTree xml.sax xml.sax.handler
    xml.sax.saxutils xml.sax.xmlreader xmlrpc.client xmlrpc.server zipapp zipfile zipimport
""".split()
)


def clean(doc):
    """A docstring as paragraphs, one line each, without doctest examples; '' if too short."""
    if not isinstance(doc, str):
        return ""
    paragraphs = []
    literal = False  # inside the indented block that follows a "...::" paragraph (code, a shell session)
    for block in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        if literal and block[:1].isspace():
            continue
        lines = []
        for line in block.splitlines():
            if line.strip().startswith(">>>"):
                break  # the example, its "..." continuations and its output run to the blank line
            lines.append(line.strip())
        paragraph = " ".join(line for line in lines if line)
        literal = paragraph.endswith("::")
        if literal:
            paragraph = paragraph[:-1]  # reST's "Example::" reads "Example:"
        if paragraph:
            paragraphs.append(paragraph)
    text = "\n\n".join(paragraphs)
    return text if len(text) >= MIN_DOC else ""


def public_objects(mod):
    """The module's public classes and functions, each followed by its class's public methods.

    Names in ``__all__`` count when defined in the module or in a private helper module
    (heapq's functions come from _heapq, concurrent.futures' classes from
    concurrent.futures._base); without ``__all__``, only those defined in the module.
    Either way a name re-exported from another public module is left to that module's document.
    """
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [name for name in vars(mod) if not name.startswith("_")]
    seen = set()
    for name in names:
        obj = getattr(mod, name, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        origin = getattr(obj, "__module__", None)
        if not isinstance(origin, str) or id(obj) in seen:
            continue
        private = any(part.startswith("_") for part in origin.split("."))
        if origin != mod.__name__ and not (hasattr(mod, "__all__") and private):
            continue
        seen.add(id(obj))
        yield obj
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr == "__init__" and inspect.isfunction(member):
                    yield member  # the constructor's own docstring, not C's "Initialize self."
                elif not attr.startswith("_") and (inspect.isroutine(member) or isinstance(member, property)):
                    yield member


def document(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = importlib.import_module(name)
    parts = [clean(mod.__doc__)] + [clean(obj.__doc__) for obj in public_objects(mod)]
    return "\n\n".join(dict.fromkeys(part for part in parts if part))  # drops repeats


def main():
    docs = []
    for name in MODULES:
        try:
            text = document(name)
        except ImportError as err:
            print(f"skipped {name}: {err}", file=sys.stderr)
            continue
        if len(text) >= MIN_TEXT:
            docs.append({"id": name, "text": text})
    files = [[] for _ in range(N_FILES)]
    for i, doc in enumerate(docs):  # docs are in id order; deal them out round-robin
        files[i % N_FILES].append(doc)
    print(f"Python {sys.version.split()[0]}: {len(MODULES)} modules, {len(docs)} documents")
    for i, chunk in enumerate(files, 1):
        path = OUT / f"stdlib-docs-{i}.jsonl"
        data = "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in chunk)
        path.write_text(data, encoding="utf-8", newline="\n")
        print(f"{path.name}: {len(chunk)} documents, {len(data.encode('utf-8'))} bytes")


if __name__ == "__main__":
    main()
