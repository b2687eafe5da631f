"""Test helpers for running the pipeline the way cluster users do: a Spark standalone master and
workers on 127.0.0.1, the package zipped for ``--py-files``, and a tiny MovieLens input folder."""
from __future__ import annotations

import csv
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Optional, Sequence

from recsys_spark.core.config import PACKAGE_DATA
from recsys_spark.core.session import DELTA_CATALOG, DELTA_EXTENSION

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
# The one spark-submit entry script: `jobs/main.py <command> [options]`.
JOB_ENTRY = REPO / "jobs" / "main.py"
# .ci/run sets this to a folder where the cluster's process ids are written, so that it can stop
# what a crashed test run left behind.
PID_DIR_ENV = "RECSYS_CLUSTER_PIDS"


def spark_home() -> Path:
    """The Spark installation that ships inside the pyspark package (bin/spark-class, spark-submit)."""
    from pyspark.find_spark_home import _find_spark_home

    return Path(_find_spark_home())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_tiny_movielens(dest: Path, users: int = 8, ratings_per_user: int = 12) -> dict:
    """A MovieLens folder (ratings.csv, movies.csv, tags.csv) cut from the bundled sample: the
    first ``ratings_per_user`` ratings of the first ``users`` users, and the movies and tags they
    touch. Returns the row counts written."""
    source = PACKAGE_DATA / "ml-latest-small"
    dest.mkdir(parents=True, exist_ok=True)
    kept: dict[str, int] = {}
    movie_ids: set[str] = set()
    with open(source / "ratings.csv", newline="", encoding="utf-8") as src, open(
        dest / "ratings.csv", "w", newline="", encoding="utf-8"
    ) as out:
        reader, writer = csv.reader(src), csv.writer(out)
        writer.writerow(next(reader))
        for row in reader:
            user = row[0]
            if user not in kept and len(kept) == users:
                break
            if kept.get(user, 0) < ratings_per_user:
                kept[user] = kept.get(user, 0) + 1
                movie_ids.add(row[1])
                writer.writerow(row)
    counts = {"users": len(kept), "ratings": sum(kept.values()), "movies": len(movie_ids)}
    for name, id_column in (("movies.csv", 0), ("tags.csv", 1)):
        with open(source / name, newline="", encoding="utf-8") as src, open(
            dest / name, "w", newline="", encoding="utf-8"
        ) as out:
            reader, writer = csv.reader(src), csv.writer(out)
            writer.writerow(next(reader))
            rows = [row for row in reader if row[id_column] in movie_ids]
            writer.writerows(rows)
        counts[name.split(".")[0] + "_rows"] = len(rows)
    return counts


def build_package_zip(dest: Path) -> Path:
    """``recsys_spark`` as a zip for ``--py-files``: its Python modules and packaged YAML, no data."""
    package = REPO / "recsys_spark"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(package.rglob("*")):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(REPO))
    return dest


class StandaloneCluster:
    """A Spark standalone master and ``workers`` workers on 127.0.0.1, each its own process group.

    ``start()`` waits until every worker has registered; ``stop()`` ends the processes it started.
    """

    def __init__(self, workdir: Path, workers: int = 2, cores: int = 1, memory: str = "1g"):
        self.workdir = workdir
        self.workers = workers
        self.cores = cores
        self.memory = memory
        self.port = free_port()
        self.ui_port = free_port()
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def _env(self) -> dict:
        env = dict(os.environ)
        env.update(
            SPARK_HOME=str(spark_home()),
            SPARK_LOCAL_IP="127.0.0.1",
            # The daemons only schedule; their heap can be small on a shared machine.
            SPARK_DAEMON_MEMORY="256m",
            PYSPARK_PYTHON=sys.executable,
        )
        return env

    def _launch(self, name: str, args: Sequence[str]) -> None:
        log_path = self.workdir / f"{name}.log"
        command = [str(spark_home() / "bin" / "spark-class"), *args]
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, env=self._env(), start_new_session=True
            )
        self.processes[name] = process
        pid_dir = os.environ.get(PID_DIR_ENV)
        if pid_dir:
            Path(pid_dir, f"{name}.pid").write_text(str(process.pid))
        log.info("started %s (pid %d): %s", name, process.pid, " ".join(command))

    def state(self) -> dict:
        """The master's status page as JSON (workers, running and completed applications)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as response:
            return json.load(response)

    def start(self, timeout: float = 300.0) -> "StandaloneCluster":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._launch(
            "master",
            ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
             "--port", str(self.port), "--webui-port", str(self.ui_port)],
        )
        for index in range(self.workers):
            worker_dir = self.workdir / f"worker-{index}"
            worker_dir.mkdir(exist_ok=True)
            self._launch(
                f"worker-{index}",
                ["org.apache.spark.deploy.worker.Worker", self.master_url, "--host", "127.0.0.1",
                 "--cores", str(self.cores), "--memory", self.memory,
                 "--webui-port", str(free_port()), "--work-dir", str(worker_dir)],
            )
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    if self.state().get("aliveworkers", 0) >= self.workers:
                        log.info("cluster %s up with %d workers", self.master_url, self.workers)
                        return self
                except (OSError, ValueError):
                    pass  # the master's web UI is not listening yet, or answers before its page is ready
                time.sleep(1.0)
        except BaseException:
            self.stop()  # never leave the daemons running when start fails
            raise
        self.stop()
        raise TimeoutError(f"standalone cluster not up after {timeout:.0f}s; logs in {self.workdir}")

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"standalone {name} exited with {process.returncode}:\n{tail}")

    def stop(self, grace: float = 15.0) -> None:
        for name, process in reversed(list(self.processes.items())):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name, process in self.processes.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            pid_dir = os.environ.get(PID_DIR_ENV)
            if pid_dir:
                Path(pid_dir, f"{name}.pid").unlink(missing_ok=True)
        self.processes.clear()


def spark_submit(
    cluster: StandaloneCluster,
    command: str,
    py_files: Path,
    config: Path,
    overrides: Sequence[str],
    cwd: Path,
    # Generous: a guard against a hung job, not a speed check (a loaded shared VM is slow).
    timeout: float = 2400.0,
    delta_package: Optional[str] = None,
) -> tuple[int, str, str]:
    """``spark-submit jobs/main.py <command>`` to the cluster (``command``: ``run`` or a stage)
    with the package in ``--py-files`` and the config in ``--files``; returns (exit code,
    stdout, stderr)."""
    from recsys_spark.core.config import SparkConfig

    command = [
        str(spark_home() / "bin" / "spark-submit"),
        "--master", cluster.master_url,
        "--deploy-mode", "client",
        "--driver-memory", "1g",
        "--executor-memory", "768m",
        "--total-executor-cores", str(cluster.workers * cluster.cores),
        "--packages", delta_package or SparkConfig().delta_package,
        "--conf", f"spark.sql.extensions={DELTA_EXTENSION}",
        "--conf", f"spark.sql.catalog.spark_catalog={DELTA_CATALOG}",
        "--conf", f"spark.pyspark.python={sys.executable}",
        # Delta replays its log in 50 tasks by default: far too many for a few kilobytes.
        "--conf", "spark.databricks.delta.snapshotPartitions=2",
        "--py-files", str(py_files),
        "--files", str(config),
        str(JOB_ENTRY), command,
        "--config", str(config),
    ]
    for override in overrides:
        command += ["--set", override]
    env = dict(os.environ, SPARK_HOME=str(spark_home()), SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    # The driver must import the shipped zip, not a checkout on the path.
    env.pop("PYTHONPATH", None)
    log.info("spark-submit: %s", " ".join(command))
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def summary_line(stdout: str) -> dict:
    """The JSON summary the CLI prints on stdout: the last line that is a JSON object. Under
    spark-submit the driver's stderr is merged into stdout, and py4j logs after the summary."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"no JSON summary line in the job's output: {stdout[-2000:]!r}")
