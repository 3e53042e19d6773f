"""What the benches share with the tests: the pipeline as a fresh clone runs it, on this machine, against local
stand-ins for what it meets elsewhere. The bundled sample dump (here), an HTTP mirror on 127.0.0.1 (mirror.py), a copy
of the workflow and Snakemake run in it with the venv's tools (workflow.py), and a Slurm cluster on this machine
(slurm_cluster.py, with the Debian packages it needs from debian.py). The tests import these from here."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data/mirror/enwiki/latest/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
