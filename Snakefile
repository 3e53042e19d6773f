# bertpipe: from a Wikipedia dump to a pretrained BERT. Rules are thin: each calls one `bertpipe <stage>` command;
# the work is done in src/bertpipe/. Run `snakemake --cores 2 all --configfile config.demo.yaml` for the demo
# (targets before --configfile: it takes several files and would read `all` as one).
import shlex
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

LIBRARY = str(Path(workflow.basedir) / "src")
sys.path.insert(0, LIBRARY)  # bertpipe.settings and bertpipe.tracking from this checkout

from bertpipe import settings as bertpipe_settings


configfile: "config.yaml"


# The schema is generated from src/bertpipe/settings.py (`bertpipe settings schema`); settings.check then finds
# what a schema cannot: settings that contradict each other. Both stop the run before any job, naming the keys.
validate(config, "workflow/schemas/config.schema.yaml")
CONFIG_FAULTS = bertpipe_settings.check(bertpipe_settings.from_dict(bertpipe_settings.Config, config))
if CONFIG_FAULTS:
    raise WorkflowError("the config contradicts itself:\n  " + "\n  ".join(CONFIG_FAULTS))


include: "workflow/rules/common.smk"
include: "workflow/slurm.smk"
include: "workflow/tracking.smk"


# Rules run `bertpipe <stage> ...`, a shell function: `python -m bertpipe` from the library beside this Snakefile,
# whichever environment runs the job (the venv, a rule's conda env, a Slurm job), so the workflow and its code always
# come from one checkout; with this pipeline's tracking flags (tracking.smk) before the stage.
# (Snakemake formats the prefix like a shell command, hence the doubled braces.)
shell.prefix(
    f"export PYTHONPATH={shlex.quote(LIBRARY)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
    f'bertpipe() {{{{ python -m bertpipe {TRACKING.flags().replace("{", "{{{{").replace("}", "}}}}")} "$@"; }}}}; '
)


# Lists and sums of small JSON files run where Snakemake runs: as Slurm jobs they would wait in the queue for a second's work.
localrules:
    all,
    corpus_files,
    corpus_jobs,
    corpus_stats,
    tfrecords_list,
    tfrecords_stats,


rule all:
    input:
        f"{RESULTS}/corpus/stats.json",
        lambda wildcards: tfrecords_stats(),
        f"{RESULTS}/register/model-version.json",
    default_target: True


include: "workflow/rules/download.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/tokenizer.smk"
include: "workflow/rules/tfrecords.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/register.smk"
