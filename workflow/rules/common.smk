# Paths shared by the rules, and the dump's part list, known once the manifest checkpoint has run.
import json

RESULTS = config["results"]
DUMP_DIR = f"{config['resources']}/dumps/{config['dump']['wiki']}/{config['dump']['date']}"
LOGS = "logs"

wildcard_constraints:
    part=r"[^/]+",


def dump_parts(wildcards=None):
    """The names of the dump's article parts, from the manifest (runs the checkpoint first)."""
    manifest = checkpoints.download_manifest.get().output[0]
    return sorted(json.loads(open(manifest).read())["parts"])
