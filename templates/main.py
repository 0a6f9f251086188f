"""Flex Template entry point (the image's FLEX_TEMPLATE_PYTHON_PY_FILE): the mining pipeline on Dataflow.

The template launcher runs `python main.py --NAME=VALUE …` with one `--NAME=VALUE` per template parameter
(`templates/metadata.json`, the names of `pipeline.options.option_names()`) plus Dataflow's own (runner,
project, region, staging, setup file, sdk_container_image, …); everything is handed to `pipeline.run.main`,
which validates the options (a bad value exits 2 with a one-line message in the launcher log) and submits
the job.

`--no_wait_until_finish` is added: a Flex Template launcher must submit the job and exit, not wait for it
(`pipeline.run` builds the pipeline in a `with` block, which otherwise waits). The local runner finishes the
whole run inside `Pipeline.run()`, so the flag changes nothing there.

This file is a thin launcher on purpose: run from /template, a script inside the `pipeline` package would
put that package's folder first on sys.path, where its modules (options.py, filters.py, …) would shadow
top-level imports of the same names.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

NO_WAIT = "--no_wait_until_finish"


def launcher_args(argv: Sequence[str]) -> list[str]:
    """The launcher's arguments with `--no_wait_until_finish` (once): submit the job, then return.

    The template's `streaming=true|false` is passed on as the launcher wrote it: the pipeline's flag check
    (`pipeline.flags.check_run_argv`) turns it into Beam's `--streaming` switch, as for `mining-mapper run`."""
    argv = list(argv)
    return argv if NO_WAIT in argv else [*argv, NO_WAIT]


def launch(argv: Sequence[str] | None = None) -> int:
    """Run the pipeline with the launcher's arguments; the exit status the launcher reports."""
    from pipeline.run import main

    return main(launcher_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(launch())
