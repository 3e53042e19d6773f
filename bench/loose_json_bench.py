"""The loose-json index (train/loose_json_samples.build_lazy) at growing sizes: MB/s, and the peak RSS of the process
that builds it, which must not grow with the file.

The input is generated from the bundled sample: the wikitext of its pages, cut into documents of English
Wikipedia's mean length (about 3 kB: 20 GB of text in 6.9 million articles) and repeated under new ids until the file
has the size asked for (real text, so json parsing and UTF-8 encoding cost what they cost on Wikipedia). Each size
is indexed in a fresh process, so that its peak RSS is its own.

    .venv/bin/python -m bench.loose_json_bench --mb 50 500
"""

import argparse
import bz2
import json
import multiprocessing
import re
import tempfile
import time
from pathlib import Path

from bench.harness import SAMPLE


def write_corpus(path: Path, megabytes: float, document_chars: int) -> int:
    """One JSON document a line, pieces of the sample's page texts repeated under new ids; returns the documents."""
    xml = bz2.decompress(SAMPLE.read_bytes()).decode("utf-8")
    pages = re.findall(r"<text[^>]*>(.*?)</text>", xml, flags=re.S)
    texts = [page[start:start + document_chars] for page in pages for start in range(0, len(page), document_chars)]
    documents, written = 0, 0
    with open(path, "w", encoding="utf-8") as out:
        while written < megabytes * 1e6:
            line = json.dumps({"id": f"doc-{documents}", "text": texts[documents % len(texts)]}) + "\n"
            out.write(line)
            written += len(line.encode("utf-8"))
            documents += 1
    return documents


def index(path: str, results) -> None:
    from bertpipe.train.loose_json_samples import build_lazy

    started = time.perf_counter()
    build_lazy(path, "text")
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a process spawned from a large
    # parent would report the parent's pages (the rehearsal's 1,500 MB run showed 2 GB for a 225 MB index build).
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    results.put((time.perf_counter() - started, int(status["VmHWM"].split()[0]) / 1024))


def main():
    parser = argparse.ArgumentParser(prog=".venv/bin/python -m bench.loose_json_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, nargs="+", default=[50, 500], help="input sizes, MB of json")
    parser.add_argument("--document-chars", type=int, default=3000, help="characters a document (default: %(default)s)")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for megabytes in args.mb:
            path = Path(folder, f"wiki-{megabytes:g}MB.jsonl")
            documents = write_corpus(path, megabytes, args.document_chars)
            results = context.Queue()
            worker = context.Process(target=index, args=(str(path), results))
            worker.start()
            seconds, peak_mb = results.get()
            worker.join()
            size = path.stat().st_size / 1e6
            rows.append((size, documents, seconds, peak_mb))
            print(f"{size:8.1f} MB  {documents:9,d} documents  {seconds:6.1f} s  {size / seconds:6.1f} MB/s  "
                  f"peak RSS {peak_mb:6.1f} MB", flush=True)
    smallest, largest = rows[0], rows[-1]
    print(f"x{largest[0] / smallest[0]:.0f} the input: peak RSS x{largest[3] / smallest[3]:.2f}, "
          f"MB/s x{(largest[0] / largest[2]) / (smallest[0] / smallest[2]):.2f}")


if __name__ == "__main__":
    main()
