"""The commands that serve the pipeline without being a stage of it: `bertpipe tracking replay` sends what tracking
could not send when it was written; `bertpipe tracking runs-view` prints where the UI shows the experiment's runs;
`bertpipe settings` writes the files derived from settings.py."""

import sys
from pathlib import Path

from bertpipe import BertpipeError, settings
from bertpipe.redaction import redact
from bertpipe.stages import add_step


def add_tracking_arguments(parser) -> None:
    steps = parser.add_subparsers(dest="step", required=True)
    replay = add_step(steps, "replay", "send the offline records of --tracking-dir to --tracking-uri, each once",
                      description="When MLflow cannot be reached, jobs keep what they would have logged in "
                                  "<tracking-dir>/offline/. Once it is back, this sends it there, to the runs it "
                                  "belongs to, and remembers what it sent: run it again and nothing is sent twice. A "
                                  "record MLflow refuses (its run was deleted, say) is reported and kept, with the "
                                  "rest of its file, for the next replay; the other files go on. It exits with status "
                                  "1 when something is kept so, or when MLflow cannot be reached. (The workflow runs "
                                  "it at the start of each pipeline run.) E.g. bertpipe --tracking-uri "
                                  "http://127.0.0.1:5000 --tracking-dir results/mlflow tracking replay")
    replay.set_defaults(run=replay_offline_records, label=None, inputs=(), tracked=False)

    view = add_step(steps, "runs-view", "print the URL of the experiment's runs in MLflow's UI",
                    description="The experiment's runs in the UI's model-training view (MLflow 3's UI keeps its mode "
                                "per browser and otherwise opens on its GenAI pages). E.g. bertpipe --tracking-uri "
                                "sqlite:///$PWD/results/mlflow/mlflow.db tracking runs-view --ui http://127.0.0.1:5000")
    view.add_argument("--ui", help="the UI's address (default: the tracking URI, when it is a server's)")
    view.set_defaults(run=print_runs_view, label=None, inputs=(), tracked=False)


def replay_offline_records(args, _) -> None:
    from bertpipe import tracking

    if not args.tracking_uri:
        raise BertpipeError("no MLflow tracking URI: give `bertpipe --tracking-uri URI --tracking-dir results/mlflow "
                            "tracking replay` (for the SQLite default, sqlite:///<absolute path of results>/mlflow/"
                            "mlflow.db)")
    counts = tracking.replay(tracking.target_of(args))
    print(f"replayed {counts['records']} records of {counts['files']} files ({counts['runs_created']} runs created, "
          f"{counts['skipped']} records not for replay) to {redact(args.tracking_uri)}")
    if counts["refused"] or counts["waiting"]:
        raise BertpipeError(f"{counts['refused']} records were refused by MLflow and {counts['waiting']} more wait "
                            f"behind them or for their run: they are kept in {args.tracking_dir}/offline for the next "
                            "replay; the warnings above say which and what to do")


def print_runs_view(args, _) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from bertpipe import tracking

    server = args.tracking_uri and args.tracking_uri.startswith(("http:", "https:"))
    if not args.tracking_uri or not (args.ui or server):
        raise BertpipeError("give the tracking URI (bertpipe --tracking-uri URI tracking runs-view) and, for a "
                            "database, the address of the UI that serves it (--ui http://127.0.0.1:5000)")
    store = args.tracking_uri.removeprefix("sqlite:///")
    if args.tracking_uri.startswith("sqlite:///") and not Path(store).is_file():
        raise BertpipeError(f"no MLflow store at {store}: run the pipeline first")
    try:
        experiment = MlflowClient(args.tracking_uri).get_experiment_by_name(args.experiment)
    except MlflowException as error:
        raise BertpipeError(f"MLflow at {redact(args.tracking_uri)} could not answer ({error}); is it up?") from None
    if experiment is None:
        raise BertpipeError(f"no experiment {args.experiment!r} at {redact(args.tracking_uri)}: run the pipeline "
                            "first, or name the experiment with --experiment")
    print(tracking.runs_view(args.ui or args.tracking_uri, experiment.experiment_id))


def add_settings_arguments(parser) -> None:
    parser.description = ("Every setting is defined once, in src/bertpipe/settings.py; this writes what is derived "
                          "from it.")
    parser.add_argument("what", choices=["schema", "docs"],
                        help="schema: workflow/schemas/config.schema.yaml; docs: docs/settings.md")
    parser.set_defaults(run=write_derived_settings_file, label=None, inputs=(), tracked=False)


def write_derived_settings_file(args, _) -> None:
    import yaml

    if args.what == "schema":
        sys.stdout.write("# Generated from src/bertpipe/settings.py by `make settings`: edit that file, not this "
                         "one.\n" + yaml.safe_dump(settings.config_schema(), sort_keys=False, width=120))
    else:
        sys.stdout.write(settings.settings_table())
