# Stage `download`: the dump's manifest (a checkpoint: the parts are known only after it), then one job per part.


checkpoint download_manifest:
    output:
        f"{DUMP_DIR}/manifest.json",
    params:
        dump=settings_flags(DumpSettings, config["dump"]),
        download=settings_flags(
            DownloadSettings,
            config["download"],
            only=("timeout_seconds", "redirects_to_other_hosts", "token_env"),
        ),
    resources:
        **slurm_job("download_manifest"),
    conda:
        "../../envs/download.yaml"
    log:
        f"{LOGS}/download/manifest.log",
    shell:
        "bertpipe --log-file {log:q} --run-name 'download manifest'"
        " download manifest {params.dump} {params.download} --out {output:q} 2> {log:q}"


rule download:
    input:
        manifest=f"{DUMP_DIR}/manifest.json",
    output:
        f"{DUMP_DIR}/{{part}}.bz2",
    params:
        download=settings_flags(DownloadSettings, config["download"]),
        mirror=settings_flags(DumpSettings, config["dump"], only=("mirror",)),
    resources:
        **slurm_job("download"),
    conda:
        "../../envs/download.yaml"
    log:
        f"{LOGS}/download/{{part}}.log",
    shell:
        "bertpipe --log-file {log:q} --run-name 'download {wildcards.part}'"
        " download part --manifest {input.manifest:q} --part {wildcards.part:q}"
        " --out {output:q} {params.mirror} {params.download} 2> {log:q}"
