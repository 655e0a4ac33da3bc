"""scripts/install-system.sh and scripts/pgcluster.sh, by their functions on fixture inputs (issue
18, item 15): nothing here installs a package, touches apt or restarts a cluster.

- install-system.sh fetches the pgvector source package from the Debian mirror of the system's
  own apt sources (one-line ``*.list`` and deb822 ``*.sources``), never from a URL of its own;
- pgcluster.sh restarts a running cluster whose server binary apt replaced under it (``refresh``,
  run by install-system.sh and by ``start``), saying why.

Both scripts return after defining their functions when sourced.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT

INSTALL_SYSTEM = ROOT / "scripts" / "install-system.sh"
PGCLUSTER = ROOT / "scripts" / "pgcluster.sh"


def _run(script: Path, call: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Sources ``script`` (its functions only: no arguments, $0 not the script) and runs
    ``call`` in bash, with ``args`` as "$@"."""
    code = f'script=$1; shift; args=("$@"); set --; source "$script"; set +e; set -- "${{args[@]}}"; {call}'
    return subprocess.run(
        ["bash", "-c", code, "bash", str(script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


def _mirrors(codename: str, *files: Path) -> list[str]:
    done = _run(INSTALL_SYSTEM, 'debian_mirrors "$@"', codename, *map(str, files))
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


# ---- the Debian mirror, from the system's apt sources --------------------------------------


def test_one_line_sources(tmp_path: Path) -> None:
    sources = tmp_path / "sources.list"
    sources.write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb http://apt.postgresql.org/pub/repos/apt bookworm-pgdg main\n"
        "deb http://security.example/debian-security bookworm-security main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://mirror.local:3142/deb.debian.org/debian/ bookworm main contrib  # a proxy\n"
        "deb-src [ trusted=yes ] http://second.example/debian bookworm main\n"
        "deb http://mirror.local/debian bookworm-updates main\n"
    )
    assert _mirrors("bookworm", sources) == [
        "http://mirror.local:3142/deb.debian.org/debian",
        "http://second.example/debian",
    ]
    assert _mirrors("trixie", sources) == []


def test_deb822_sources(tmp_path: Path) -> None:
    sources = tmp_path / "debian.sources"
    sources.write_text(
        "Types: deb\n"
        "URIs: http://disabled.example/debian\n"
        "Suites: bookworm\n"
        "Components: main\n"
        "Enabled: no\n"
        "\n"
        "Types: deb deb-src\n"
        "# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
        "URIs: http://mirror.local/debian/\n"
        "  http://fallback.local/debian\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        "\n"
        "types: deb\n"
        "uris: http://security.local/debian-security\n"
        "suites: bookworm-security\n"
        "components: main\n"
    )
    assert _mirrors("bookworm", sources) == [
        "http://mirror.local/debian",
        "http://fallback.local/debian",
    ]


def test_files_are_read_in_apts_order_and_missing_ones_skipped(tmp_path: Path) -> None:
    one = tmp_path / "a.list"
    one.write_text("deb http://from-list.example/debian trixie main\n")
    two = tmp_path / "b.sources"
    two.write_text("Types: deb\nURIs: http://from-sources.example/debian\nSuites: trixie\n")
    assert _mirrors("trixie", tmp_path / "missing.list", one, two) == [
        "http://from-list.example/debian",
        "http://from-sources.example/debian",
    ]


def test_no_debian_source_is_an_error_that_says_where_it_looked(tmp_path: Path) -> None:
    done = _run(INSTALL_SYSTEM, "debian_mirrors() { :; }; debian_mirror bookworm")
    assert done.returncode != 0
    assert "no apt source serves Debian bookworm" in done.stderr
    assert "/etc/apt/sources.list.d/*.list" in done.stderr


def test_the_script_names_no_mirror_of_its_own() -> None:
    text = INSTALL_SYSTEM.read_text()
    assert "deb.debian.org" not in text
    assert 'debian_mirror "$codename"' in text


# ---- a server binary replaced under the running postmaster ---------------------------------

BIN_15_20 = "postgres (PostgreSQL) 15.20 (Debian 15.20-1.pgdg120+1)"
BIN_15_18 = "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
SERVER_15_18 = "15.18 (Debian 15.18-0+deb12u1)"


@pytest.mark.parametrize(
    ("binary", "server", "ctime", "started", "reason"),
    [
        # The case seen: apt moved the server from 15.18 to 15.20 under a running cluster.
        (
            BIN_15_20,
            SERVER_15_18,
            "100",
            "200",
            "PostgreSQL 15.20, newer than the running postmaster (15.18)",
        ),
        (BIN_15_18, "15.20 (Debian 15.20-1)", "100", "200", "PostgreSQL 15.18, older than the"),
        # Same version: no restart, whatever the times say (a reinstall of the same package).
        (BIN_15_18, SERVER_15_18, "300", "200", None),
        ("postgres (PostgreSQL) 17devel", "17devel", "300", "200", None),
        # The server did not answer: the binary's change time against the postmaster's start.
        (BIN_15_20, "", "300", "200", "changed after the postmaster started"),
        (BIN_15_20, "", "100", "200", None),
        ("", "", "", "200", None),
    ],
)
def test_restart_reason(
    binary: str, server: str, ctime: str, started: str, reason: str | None
) -> None:
    done = _run(
        PGCLUSTER, 'restart_reason "$B" "$S" "$C" "$T"', B=binary, S=server, C=ctime, T=started
    )
    if reason is None:
        assert done.returncode == 1 and done.stdout == "", done.stdout
    else:
        assert done.returncode == 0, done.stderr
        assert reason in done.stdout


def test_refresh_of_a_cluster_that_does_not_exist_does_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "no-cluster"
    for command in ("refresh", "refresh-second"):
        done = subprocess.run(
            [str(PGCLUSTER), command],
            capture_output=True,
            text=True,
            env={**os.environ, "PGINGEST_PGDATA": str(folder), "PGINGEST_PGDATA2": str(folder)},
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert not folder.exists()


def test_the_running_cluster_needs_no_restart() -> None:
    """restart_reason on the private cluster's real inputs (nothing is restarted here): its binary
    is the one running, so refresh would do nothing."""
    status = subprocess.run([str(PGCLUSTER), "status"], capture_output=True, text=True, timeout=60)
    if status.returncode != 0:
        pytest.skip("the private cluster does not run (DATABASE_URL elsewhere)")
    done = _run(
        PGCLUSTER,
        'locate; pick_bin; b=$("$BIN/postgres" --version); s=$("$BIN/psql" -X -qAt -h 127.0.0.1'
        ' -p "$(running_port)" -U postgres -d postgres -c "SHOW server_version"); echo "$b|$s";'
        ' restart_reason "$b" "$s" "$(stat -c %Z "$BIN/postgres")"'
        ' "$(sed -n 3p "$REAL/data/postmaster.pid")"; echo "rc=$?"',
    )
    first, rc = done.stdout.splitlines()[0], done.stdout.splitlines()[-1]
    binary, server = first.split("|")
    assert binary.startswith("postgres (PostgreSQL) ") and server, done.stdout + done.stderr
    assert rc == "rc=1", done.stdout


def test_install_system_refreshes_the_private_clusters_after_apt() -> None:
    text = INSTALL_SYSTEM.read_text()
    main = text[text.index("# --- main ---") :]
    assert main.index('apt_install "${pkgs[@]}"') < main.index('pgcluster.sh" refresh\n')
    assert 'pgcluster.sh" refresh-second' in main
    assert "check_binary" in PGCLUSTER.read_text().split("cmd_start() {")[1].split("\n}\n")[0]


@pytest.mark.slow
def test_refresh_restarts_a_cluster_whose_binary_changed() -> None:
    """A throw-away cluster of its own: refresh with restart_reason answering "upgraded" (the
    binary cannot really change here) restarts it, says why, and it answers again."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = f"/tmp/pgingest-h15-{uuid.uuid4().hex[:10]}"
    env = {"PGINGEST_PGDATA": folder, "PGINGEST_PGPORT": str(port)}
    try:
        start = subprocess.run(
            [str(PGCLUSTER), "start"],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=180,
        )
        assert start.returncode == 0, start.stderr
        pid = Path(folder, "data", "postmaster.pid").read_text().split("\n")[0]
        done = _run(
            PGCLUSTER,
            'restart_reason() { echo "the server binary is PostgreSQL 15.20, newer"; }; cmd_refresh',
            **env,
        )
        assert done.returncode == 0, done.stderr
        assert "newer: restarting the cluster" in done.stderr
        assert Path(folder, "data", "postmaster.pid").read_text().split("\n")[0] != pid
        status = subprocess.run(
            [str(PGCLUSTER), "status"], capture_output=True, text=True, env={**os.environ, **env}
        )
        assert status.returncode == 0, status.stdout + status.stderr
    finally:
        subprocess.run(
            [str(PGCLUSTER), "destroy"], capture_output=True, env={**os.environ, **env}, timeout=120
        )
