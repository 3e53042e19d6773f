# bertpipe: from a Wikipedia dump to a pretrained BERT. Rules are thin: each calls one `bertpipe <stage>` command;
# the work is done in src/bertpipe/. Run `snakemake --cores 2 --configfile config.demo.yaml all` for the demo.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"


rule all:
    input:
        f"{RESULTS}/corpus/stats.json",
    default_target: True


include: "workflow/rules/download.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/corpus.smk"
