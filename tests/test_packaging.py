"""What is distributed: the source distribution holds everything its test suite needs, and the
wheel holds the example photos (package data) and the licence, usable from an installed copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO

_BUILD = """
import sys
from setuptools import build_meta
kind, out = sys.argv[1], sys.argv[2]
name = build_meta.build_sdist(out) if kind == "sdist" else build_meta.build_wheel(out)
print(name)
"""


def build(kind: str, out: Path) -> Path:
    run = subprocess.run(
        [sys.executable, "-c", _BUILD, kind, str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return out / run.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build("wheel", tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed (without dependencies: the test's environment has them) into a
    folder of its own, put first on ``PYTHONPATH`` by :func:`from_the_wheel`."""
    target = tmp_path_factory.mktemp("site")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    return target


def from_the_wheel(target: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(target)}


def test_the_sdist_holds_what_its_tests_need(tmp_path):
    sdist = build("sdist", tmp_path)
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in (
        "LICENSE",
        "constraints.txt",
        "tests/__init__.py",
        "tests/conftest.py",
        "tests/helpers/__init__.py",
        "tests/fixtures/golden/cases.safetensors",
        "tests/fixtures/golden_mask/cases.json",
        "examples/make_examples.py",
        "src/idm_vton/examples/examples.json",
        "src/idm_vton/examples/person.jpg",
        ".ci/run",
    ):
        assert needed in names, needed
    tracked = subprocess.run(
        ["git", "ls-files", "tests"], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    missing = [name for name in tracked if name not in names]
    assert missing == [] or not tracked, missing[:10]


def test_the_wheel_ships_the_examples_and_the_licence(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = json.loads(archive.read("idm_vton/examples/examples.json"))
    listed = [e["file"] for kind in ("people", "garments") for e in metadata[kind]]
    listed += [e[k] for e in metadata["people"] for k in ("mask", "pose") if k in e]
    assert all(f"idm_vton/examples/{name}" in names for name in listed)
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    categories = {g["category"] for g in metadata["garments"]}
    assert categories == {"upper_body", "lower_body", "dresses"}
    assert all(e["licence"] for kind in ("people", "garments") for e in metadata[kind])


def test_an_installed_wheel_finds_its_examples(installed, tmp_path):
    target = installed
    code = (
        "import json, idm_vton\n"
        "from idm_vton.examples import example_garments, example_people\n"
        "people, garments = example_people(), example_garments()\n"
        "files = [p.path for p in people] + [g.path for g in garments]\n"
        "files += [p.mask for p in people if p.mask] + [p.pose for p in people if p.pose]\n"
        "print(json.dumps({'module': idm_vton.__file__, 'files': [str(f) for f in files],\n"
        "                  'exist': all(f.is_file() for f in files)}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=from_the_wheel(target),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["module"].startswith(str(target))  # the installed copy, not the clone
    assert report["exist"] and all(f.startswith(str(target)) for f in report["files"])
    assert len(report["files"]) >= 9


def test_the_installed_wheel_serves_its_ui_with_the_example_photos(installed, tmp_path):
    """``idm-vton serve`` from the wheel (the environment of the test above, which checks that
    ``idm_vton`` is the installed copy), run outside the clone: the UI's example galleries
    list every example person and garment (a garment with its description and category), and
    the example files are served."""
    import httpx

    from .serve_support import free_port, wait_until_ready

    port = free_port()
    argv = [sys.executable, "-m", "idm_vton", "serve", "--model", "tiny", "--device", "cpu"]
    log = tmp_path / "server.log"
    with open(log, "w") as stream:
        server = subprocess.Popen(
            [*argv, "--port", str(port)],
            cwd=tmp_path,
            env=from_the_wheel(installed),
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(server, url, log=log)
        config = httpx.get(f"{url}/config", timeout=30).json()
        galleries = [c["props"]["samples"] for c in config["components"] if c["type"] == "dataset"]
        people, garments, second = galleries  # second: the second garment's (lower body)
        metadata = json.loads((installed / "idm_vton" / "examples" / "examples.json").read_text())
        shown = [Path(row[0]["background"]["path"]).name for row in people]
        assert shown == [p["file"] for p in metadata["people"]]
        rows = [(Path(row[0]["path"]).name, row[1], row[2]) for row in garments]
        assert rows == [(g["file"], g["description"], g["category"]) for g in metadata["garments"]]
        lower = [g for g in metadata["garments"] if g["category"] == "lower_body"]
        assert [Path(row[0]["path"]).name for row in second] == [g["file"] for g in lower]
        served = httpx.get(garments[-1][0]["url"], timeout=30)
        assert served.status_code == 200
        assert served.content == (installed / "idm_vton" / "examples" / "dress.jpg").read_bytes()
    finally:
        server.terminate()
        server.wait(timeout=60)
