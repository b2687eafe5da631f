"""The wheel a Spark runtime installs: core requirements are ranges that leave Spark alone, and
the exact local stack is an extra."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.support import REPO

SPARK_PACKAGES = {"pyspark", "delta-spark"}


def _requirement_name(spec: str) -> str:
    name = spec.split(";")[0]
    for stop in "<>=!~[ (":
        name = name.split(stop)[0]
    return name.strip().lower()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (built,) = out.glob("recsys_spark-*.whl")
    return built


def _metadata(wheel: Path) -> list[tuple[str, str]]:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(name).decode("utf-8")
    return [tuple(line.split(": ", 1)) for line in text.splitlines() if ": " in line]


def test_core_requirements_are_ranges_without_spark(wheel):
    requires = [value for key, value in _metadata(wheel) if key == "Requires-Dist"]
    core = [r for r in requires if "extra ==" not in r]
    assert core, "the wheel declares no core requirement"
    assert not {_requirement_name(r) for r in core} & SPARK_PACKAGES, core
    assert not [r for r in core if "==" in r], f"core requirements must be ranges, not pins: {core}"


def test_local_extra_pins_the_tested_spark(wheel):
    import pyspark

    meta = _metadata(wheel)
    assert ("Provides-Extra", "local") in meta
    local = {_requirement_name(v): v.split(";")[0].strip() for k, v in meta if k == "Requires-Dist" and 'extra == "local"' in v}
    assert local["pyspark"] == f"pyspark=={pyspark.__version__}"
    assert "delta-spark" in local
    # the profiles ship inside the wheel, so an installed package finds conf/local.yaml
    with zipfile.ZipFile(wheel) as archive:
        assert "recsys_spark/conf/local.yaml" in archive.namelist()


def _fake_distribution(site: Path, name: str, version: str) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    (info / "INSTALLER").write_text("test\n", encoding="utf-8")
    (info / "RECORD").write_text("", encoding="utf-8")


def test_installing_into_a_runtime_with_another_pyspark_touches_nothing_else(wheel, tmp_path):
    """A runtime with pyspark 4.1 (and its own pandas, pyarrow, numpy): pip would install the wheel
    alone and leave every runtime package as it is."""
    env = tmp_path / "runtime"
    venv.EnvBuilder(with_pip=False).create(env)
    (site,) = env.glob("lib/python*/site-packages")
    runtime = {"pyspark": "4.1.0", "delta-spark": "4.0.0", "pandas": "2.1.4", "pyarrow": "15.0.2",
               "numpy": "1.26.0", "pyyaml": "6.0.1"}
    for name, version in runtime.items():
        _fake_distribution(site, name, version)
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "--dry-run", "--no-index",
         "--report", str(report), "--quiet", str(wheel)],
        capture_output=True, text=True, timeout=300,
        # nothing of this checkout on the runtime's path (a build leaves recsys_spark.egg-info here)
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    would_install = {(i["metadata"]["name"].lower(), i["metadata"]["version"]) for i in json.loads(report.read_text())["install"]}
    assert would_install == {("recsys-spark", "0.1.0")}
