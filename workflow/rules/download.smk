# Stage `download`: the dump's manifest (a checkpoint: the parts are known only after it), then one job per part.


checkpoint download_manifest:
    output:
        f"{DUMP_DIR}/manifest.json",
    params:
        mirror=config["dump"]["mirror"],
        wiki=config["dump"]["wiki"],
        date=config["dump"]["date"],
        timeout=config["download"]["timeout_seconds"],
    resources:
        **slurm_job("download_manifest"),
    conda:
        "../../envs/download.yaml"
    log:
        f"{LOGS}/download/manifest.log",
    shell:
        "python -m bertpipe download manifest --mirror {params.mirror:q} --wiki {params.wiki} --date {params.date}"
        " --timeout {params.timeout} --out {output:q} 2> {log:q}"


rule download:
    input:
        manifest=f"{DUMP_DIR}/manifest.json",
    output:
        f"{DUMP_DIR}/{{part}}.bz2",
    params:
        retries=config["download"]["retries"],
        backoff=config["download"]["backoff_seconds"],
        timeout=config["download"]["timeout_seconds"],
    resources:
        **slurm_job("download"),
    conda:
        "../../envs/download.yaml"
    log:
        f"{LOGS}/download/{{part}}.log",
    shell:
        "python -m bertpipe download part --manifest {input.manifest:q} --part {wildcards.part:q} --out {output:q}"
        " --retries {params.retries} --backoff {params.backoff} --timeout {params.timeout} 2> {log:q}"
