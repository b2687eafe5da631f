"""The one spark-submit entry point: any ``recsys-spark`` command.

    spark-submit [spark options] jobs/main.py <command> [--config PATH] [--set KEY=VALUE]... [--run-id ID]

``<command>`` is ``run`` (every stage in order) or a stage name (``ingest``, ``features``, ...).
This is ``recsys-spark <command>``: the CLI loads the config, builds the session and prints the
run's JSON summary as the last line on stdout. spark-submit ships only this file (YARN cluster
mode), so the package comes from ``--py-files``, an installed wheel, or the checkout next to
``jobs/``.
"""
import argparse
import sys
from pathlib import Path

try:
    import recsys_spark  # noqa: F401  (installed, or shipped with --py-files)
except ModuleNotFoundError:
    # Run from a checkout without installing: the package sits next to jobs/.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys_spark.cli import build_parser, main  # noqa: E402

HELP_FLAGS = ("-h", "--help", "--version")  # what the CLI answers without a command


def entry(argv: list) -> int:
    """``main(argv)``, except that a missing command is the CLI's usage error listing the
    commands (argparse's own names only the ``<stage>`` placeholder); exits 2 like argparse."""
    if not argv or (argv[0].startswith("-") and argv[0] not in HELP_FLAGS):
        parser = build_parser()
        (commands,) = [a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser.error(f"a command is required (choose from {', '.join(commands)})")
    return main(argv)


if __name__ == "__main__":
    sys.exit(entry(sys.argv[1:]))
