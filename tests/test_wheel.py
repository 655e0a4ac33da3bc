"""The package on its own: the built wheel holds the schema (sql/, migrations/, plpython/ and the
installer's templates), and an environment that has only the wheel installs pgingest with no
checkout anywhere, to the same schema as a checkout install.

The wheel is built offline (``pip wheel --no-deps --no-build-isolation``, with .venv's
setuptools) from a copy of the files the build reads, so nothing is written into the checkout.
The new environment gets the dependencies through a .pth file naming .venv's site-packages: a
path line, so the .pth files in that folder (the editable install's link to src/) are not read.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from pgingest import install
from tests.conftest import ROOT
from tests.helpers import schema_dump

# What the build reads (pyproject.toml's readme, the package with its links to the SQL folders).
BUILD_INPUTS = ("pyproject.toml", "README.md", "src", "sql", "migrations", "plpython")
SQL_FOLDERS = {
    "sql": ROOT / "sql",
    "migrations": ROOT / "migrations",
    "plpython": ROOT / "plpython",
    "installer": ROOT / "src" / "pgingest" / "installer",
}


def _copy_build_inputs(dest: Path) -> Path:
    dest.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name,
                dest / name,
                symlinks=True,  # src/pgingest/sql -> ../../sql, and so on: links in the copy too
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"),
            )
        else:
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _pip(*args: str | Path, cwd: Path | None = None) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _build_wheel(source: Path, out: Path) -> Path:
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, source)
    (wheel,) = out.glob("pgingest-*.whl")
    return wheel


def _sql_files_in(wheel: Path) -> dict[str, set[str]]:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    return {
        folder: {n.rsplit("/", 1)[1] for n in names if n.startswith(f"pgingest/{folder}/")}
        for folder in SQL_FOLDERS
    }


def _expected_files() -> dict[str, set[str]]:
    return {
        folder: {p.name for p in path.iterdir() if p.suffix == ".sql" or p.name == "README.md"}
        for folder, path in SQL_FOLDERS.items()
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    return _build_wheel(_copy_build_inputs(work / "source"), work / "dist")


@pytest.fixture(scope="module")
def wheel_env(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A new virtual environment outside the checkout with the wheel installed (no --editable)."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    _pip("--python", python, "install", "--no-deps", "--no-index", wheel)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "pgingest_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {"venv": venv, "python": python, "pgingest": venv / "bin" / "pgingest", "env": env}


def _run(wheel_env: dict[str, Any], *args: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd="/tmp",  # nowhere near the checkout
        env=wheel_env["env"],
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_the_wheel_holds_every_sql_file_and_readme(wheel: Path) -> None:
    assert _sql_files_in(wheel) == _expected_files()


def test_an_sdist_builds_the_same_wheel(wheel: Path, tmp_path: Path) -> None:
    """sdist -> wheel, as a package index's user gets it: the links became files on the way."""
    source = _copy_build_inputs(tmp_path / "source")
    code = f"from setuptools import build_meta as b; print(b.build_sdist({str(tmp_path)!r}))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=source, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    sdist = tmp_path / done.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        assert not [m.name for m in tar.getmembers() if m.issym()]
        tar.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    from_sdist = _build_wheel(unpacked, tmp_path / "dist")
    assert _sql_files_in(from_sdist) == _sql_files_in(wheel) == _expected_files()


def test_the_installed_wheel_is_used_not_the_checkout(wheel_env: dict[str, Any]) -> None:
    code = (
        "import pgingest; from pgingest import install; "
        "print(pgingest.__file__); print(install.project_root()); print(install.schema_version())"
    )
    out = _run(wheel_env, wheel_env["python"], "-c", code).stdout.splitlines()
    venv = str(wheel_env["venv"])
    assert out[0].startswith(venv) and out[1].startswith(venv), out
    assert not (Path(out[1]) / "sql").is_symlink()
    assert out[2] == install.schema_version() == install.migrations()[-1].name.removesuffix(".sql")


def test_version_names_the_package_and_the_schema_it_installs(
    wheel_env: dict[str, Any],
) -> None:
    from pgingest import __version__

    out = _run(wheel_env, wheel_env["pgingest"], "--version").stdout.strip()
    latest = install.migrations()[-1].name.removesuffix(".sql")
    assert out == f"pgingest {__version__} (schema {latest})"


def test_print_renders_from_the_wheel_as_from_the_checkout(wheel_env: dict[str, Any]) -> None:
    path = "/opt/pgingest/python"
    for options in (["--print"], ["--plpython-only", "--print"]):
        printed = _run(
            wheel_env, wheel_env["pgingest"], "install", *options, "--python-path", path
        ).stdout
        if "--plpython-only" in options:
            assert printed == install.render_plpython_script(psql=True, python_path=path)
        else:
            assert printed == install.render_script(psql=True, python_path=path)


def test_wheel_install_equals_checkout_install(
    wheel_env: dict[str, Any], empty_database: Any
) -> None:
    from_wheel = empty_database("wheel")
    _run(wheel_env, wheel_env["pgingest"], "install", "--database-url", from_wheel)
    from_checkout = empty_database("checkout")
    install.install(from_checkout)
    assert schema_dump(from_wheel) == schema_dump(from_checkout)
