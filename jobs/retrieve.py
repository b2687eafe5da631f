"""spark-submit entry point for the retrieve stage.

    spark-submit [spark options] jobs/retrieve.py [--config PATH] [--set KEY=VALUE]... [--run-id ID]

A thin wrapper over ``recsys-spark retrieve``: the CLI loads the config, builds the session and
prints the run's JSON summary as the last line on stdout.
"""
import sys
from pathlib import Path

try:
    import recsys_spark  # noqa: F401  (installed, or shipped with --py-files)
except ModuleNotFoundError:
    # Run from a checkout without installing: the package sits next to jobs/.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys_spark.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["retrieve"] + sys.argv[1:]))
