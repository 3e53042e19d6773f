"""The benches: speed and memory checks of the pipeline's stages and trainer, each a module run from the repository
root as `.venv/bin/python -m bench.<name> [flags]` (`--help` gives its flags and what it measures). Each prints its
figures next to a reference measured in the same run, on the same machine and input (HuggingFace's model, Google's
create_pretraining_data.py, the bare training step, the code a change replaced), as a ratio where the two do like for
like; the results, with their dates and machines, are recorded in docs/benchmarks.md. What the benches share with the
tests (the bundled sample, a local HTTP mirror, a copy of the workflow, a local Slurm cluster) is in bench/harness/,
which the tests import; no module of bench/ imports the tests."""
