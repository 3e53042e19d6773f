"""The pipeline's stages, one module each, in the order they run: download, extract, corpus, tokenizer, tfrecords,
pretrain (with launch, which runs it under torchrun), evaluate, export, register.

A stage module holds the stage's library functions (importable and testable without Snakemake or the CLI) and its
command: `add_arguments(parser)` adds its flags (made from settings.py) and sets, with `parser.set_defaults`, `run(args,
tracking_run) -> Outcome | None` and how its MLflow run is named and tracked (`label`: the flag that names what it
worked on; `inputs`: the flags whose files are hashed as its inputs; `tracked=False`: no run of its own;
`system_metrics=True`: CPU, memory and GPU sampled while it runs; `calls_mlflow=True`: the stage asks MLflow itself,
through its run. Those two write to MLflow while they work; the others' runs go through the pipeline's process,
tracking.Sender). Only `bertpipe.cli` imports a stage; a stage imports components (never another stage), and imports the
heavy libraries (torch, TensorFlow, MLflow) only where it runs, so that a job starts fast.
"""

import argparse


def add_step(steps, name: str, help_text: str, description: str = None) -> argparse.ArgumentParser:
    """A step of a stage (`bertpipe corpus build`), its help and description shown as written."""
    return steps.add_parser(name, help=help_text, description=description or help_text,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
