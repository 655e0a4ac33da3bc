#!/usr/bin/env bash
# Install what pgingest needs from the operating system (Debian 12 or 13), idempotently:
#
#   PostgreSQL server (if missing), postgresql-server-dev, plpython3u, build-essential,
#   python3-numpy/requests (PL/Python runs the system Python), python3-venv/pip,
#   pgvector >= 0.8.0 (Debian package if apt has a candidate, else built from Debian trixie's
#   source package, fetched from the Debian mirror of the system's own apt sources), pgmq 1.13.0 as a real extension (the SQL script shipped in the PyPI
#   package pgmq==1.1.4, installed as pgmq--1.13.0.sql + pgmq.control), and promtool (checks
#   and unit-tests ops/prometheus: only /usr/bin/promtool of Debian's prometheus package,
#   installed as /usr/local/bin/promtool; no Prometheus server is installed or started),
#
# then checks `CREATE EXTENSION vector; CREATE EXTENSION pgmq; CREATE EXTENSION plpython3u`
# in a throw-away cluster, and restarts the checkout's private clusters (scripts/pgcluster.sh
# refresh) whose server binary apt replaced under them (a minor upgrade pulled in by any
# postgresql-<major>-* package leaves the running postmaster with the new minor's libraries). A re-run with nothing to do takes well under a second (dpkg
# queries plus a stamp file in .stamps/).
#
# usage: scripts/install-system.sh [--image] [--no-verify] [--force-verify] [--print-pg-major]
#   --image           inside Dockerfile.postgres (postgres:<major> image): never install the
#                     server, server-dev or compilers, take pgvector only from apt.
#   --no-verify       skip the scratch-cluster check.
#   --force-verify    run the check even if the stamp says it passed.
#   --print-pg-major  print the PostgreSQL major this script (and pgcluster.sh) uses, exit.
#
# environment:
#   PG_MAJOR          PostgreSQL major (default: 15 if installed or if none is; else the
#                     newest installed one).
#   PGMQ_WHEEL        path to a pgmq-1.1.4 wheel to use instead of the venv or pip download.
#   PGINGEST_STAMPS   stamp folder (default <checkout>/.stamps)
#   PGINGEST_CACHE    download cache (default <checkout>/.cache)
#
# Runs as root (CI, Docker) or as a user with sudo (sudo is used only for apt-get and for
# writing into PostgreSQL's directories). Never edits the system's apt sources.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STAMPS=${PGINGEST_STAMPS:-$ROOT/.stamps}
CACHE=${PGINGEST_CACHE:-$ROOT/.cache}
PGVECTOR_MIN=0.8.0
PGMQ_PY_VERSION=1.1.4
PGMQ_EXT_VERSION=1.13.0 # the extension version that pgmq==1.1.4 ships (pgmq/sql/VERSION)

mode=native
verify=1
force_verify=0
for arg in "$@"; do
    case $arg in
        --image) mode=image ;;
        --no-verify) verify=0 ;;
        --force-verify) force_verify=1 ;;
        --print-pg-major) mode=print ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "install-system.sh: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

log() { printf '[install-system] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

detect_pg_major() {
    if [[ -n ${PG_MAJOR:-} ]]; then
        echo "$PG_MAJOR"
        return
    fi
    if [[ -x /usr/lib/postgresql/15/bin/postgres ]]; then
        echo 15
        return
    fi
    local best="" d m
    for d in /usr/lib/postgresql/*/bin/postgres; do
        [[ -x $d ]] || continue
        m=${d#/usr/lib/postgresql/}
        m=${m%%/*}
        if [[ -z $best ]] || ((m > best)); then best=$m; fi
    done
    echo "${best:-15}"
}

M=$(detect_pg_major)
[[ $M =~ ^[0-9]+$ ]] || die "PG_MAJOR must be a number, got '$M'"
if [[ $mode == print ]]; then
    echo "$M"
    exit 0
fi
BIN=/usr/lib/postgresql/$M/bin

# --- privileges -------------------------------------------------------------------------
if [[ $(id -u) -eq 0 ]]; then
    IS_ROOT=1
else
    IS_ROOT=0
fi
as_root() {
    if ((IS_ROOT)); then
        "$@"
    else
        command -v sudo >/dev/null || die "not root and no sudo: cannot run: $*"
        sudo "$@"
    fi
}
# Run a PostgreSQL server program: as the postgres system user when we are root (initdb,
# pg_ctl and postgres refuse to run as root), as the caller otherwise.
as_pg() {
    if ((IS_ROOT)); then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# --- temporary directories, removed on exit -------------------------------------------------
TMPDIRS=()
SCRATCH_PGDATA=""
cleanup() {
    if [[ -n $SCRATCH_PGDATA && -f $SCRATCH_PGDATA/postmaster.pid ]]; then
        as_pg "$BIN/pg_ctl" -D "$SCRATCH_PGDATA" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    local d
    for d in "${TMPDIRS[@]}"; do rm -rf -- "$d"; done
}
trap cleanup EXIT
new_tmpdir() { # new_tmpdir NAME: sets NEWTMP to a fresh temporary directory, removed on exit
    NEWTMP=$(mktemp -d "${TMPDIR:-/tmp}/pgingest-$1.XXXXXX")
    TMPDIRS+=("$NEWTMP")
}

# --- apt ------------------------------------------------------------------------------------
APT_UPDATED=0
CHANGED=0
apt_get() { as_root env DEBIAN_FRONTEND=noninteractive apt-get "$@"; }
apt_update_once() {
    ((APT_UPDATED)) && return 0
    log "apt-get update"
    apt_get update -q
    APT_UPDATED=1
}
is_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}
has_candidate() {
    local c
    c=$(apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" { print $2 }')
    [[ -n $c && $c != "(none)" ]]
}
apt_install() { # apt_install PKG...: install those not installed yet
    local missing=() p
    for p in "$@"; do is_installed "$p" || missing+=("$p"); done
    ((${#missing[@]})) || return 0
    for p in "${missing[@]}"; do
        if ! has_candidate "$p"; then
            apt_update_once
            break
        fi
    done
    log "apt-get install ${missing[*]}"
    if ! apt_get install -y -q --no-install-recommends "${missing[@]}"; then
        ((APT_UPDATED)) && die "apt-get install failed: ${missing[*]}"
        apt_update_once # stale package lists (404): refresh once and retry
        apt_get install -y -q --no-install-recommends "${missing[@]}"
    fi
    CHANGED=1
}

# --- PostgreSQL paths -----------------------------------------------------------------------
# /usr/bin/pg_config may belong to another major (libpq-dev): always ask the major's own.
pg_config_get() { # pg_config_get sharedir|pkglibdir
    if [[ -x $BIN/pg_config ]]; then
        "$BIN/pg_config" "--$1"
    elif [[ $1 == sharedir ]]; then
        echo "/usr/share/postgresql/$M"
    else
        echo "/usr/lib/postgresql/$M/lib"
    fi
}

version_ge() { [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1) == "$2" ]]; }

control_version() { # control_version FILE: its default_version
    sed -n "s/^[[:space:]]*default_version[[:space:]]*=[[:space:]]*'\([^']*\)'.*/\1/p" "$1" 2>/dev/null | head -n1
}

vector_version() { # the installed pgvector version, empty if none
    local share lib
    share=$(pg_config_get sharedir)
    lib=$(pg_config_get pkglibdir)
    [[ -f $share/extension/vector.control && -f $lib/vector.so ]] || return 0
    control_version "$share/extension/vector.control"
}

# --- the system's own Debian mirror ---------------------------------------------------------
# debian_mirrors CODENAME [FILE...]: the URIs that serve the suite CODENAME itself (not
# CODENAME-security, -updates or -pgdg) in apt's sources, one a line, in apt's order: one-line
# entries of *.list files (deb or deb-src, [options] allowed) and deb822 stanzas of *.sources
# files (Types/URIs/Suites, Enabled: no skipped); comments ignored. Default FILEs: apt's own.
# A machine behind a local mirror or proxy reaches Debian only through it.
debian_mirrors() {
    local codename=$1 f
    shift
    (($#)) || set -- /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources
    for f in "$@"; do
        [[ -f $f && -r $f ]] || continue
        case $f in
            *.sources)
                awk -v want="$codename" '
                    function flush(   n, m, i, j, s, u) {
                        if (types ~ /(^| )deb(-src)?( |$)/ && enabled !~ /^(no|false|0)$/) {
                            n = split(suites, s, " ")
                            for (i = 1; i <= n; i++) if (s[i] == want) {
                                m = split(uris, u, " ")
                                for (j = 1; j <= m; j++) { sub(/\/+$/, "", u[j]); print u[j] }
                                break
                            }
                        }
                        types = uris = suites = enabled = field = ""
                    }
                    /^[ \t]*#/ { next }
                    /^[ \t]*$/ { flush(); next }
                    /^[ \t]/ {
                        if (field == "uris") uris = uris " " $0
                        else if (field == "suites") suites = suites " " $0
                        else if (field == "types") types = types " " $0
                        next
                    }
                    {
                        field = tolower($0); sub(/[ \t]*:.*/, "", field)
                        value = $0; sub(/^[^:]*:[ \t]*/, "", value); gsub(/[ \t]+/, " ", value)
                        if (field == "types") types = value
                        else if (field == "uris") uris = value
                        else if (field == "suites") suites = value
                        else if (field == "enabled") enabled = tolower(value)
                    }
                    END { flush() }
                ' "$f"
                ;;
            *)
                awk -v want="$codename" '
                    { sub(/[ \t]*#.*/, "") }
                    $1 == "deb" || $1 == "deb-src" {
                        i = 2
                        if ($2 ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
                        if ($(i + 1) == want) { uri = $i; sub(/\/+$/, "", uri); print uri }
                    }
                ' "$f"
                ;;
        esac
    done
}

debian_mirror() { # debian_mirror CODENAME: the first of debian_mirrors, or an error
    local first
    first=$(debian_mirrors "$1")
    first=${first%%$'\n'*}
    [[ -n $first ]] ||
        die "no apt source serves Debian $1 (/etc/apt/sources.list, /etc/apt/sources.list.d/*.list, *.sources): the pgvector source package comes from the system's own Debian mirror"
    echo "$first"
}

# --- pgvector -------------------------------------------------------------------------------
build_pgvector_from_trixie_source() {
    local tmp keyopt="" o orig ver k mirror
    mirror=$(debian_mirror "$codename")
    new_tmpdir pgvector
    tmp=$NEWTMP
    chmod 755 "$tmp"
    mkdir -p "$tmp/lists/partial" "$tmp/src" "$tmp/build"
    # Debian 13 ships the archive keyring as .pgp, Debian 12 as .gpg (without either, apt
    # falls back to /etc/apt/trusted.gpg.d).
    for k in /usr/share/keyrings/debian-archive-keyring.pgp /usr/share/keyrings/debian-archive-keyring.gpg; do
        if [[ -r $k ]]; then
            keyopt="[signed-by=$k] "
            break
        fi
    done
    # The mirror that serves this system's release serves trixie too (Debian mirrors and proxies
    # carry every suite).
    echo "deb-src ${keyopt}${mirror} trixie main" >"$tmp/sources.list"
    # A private apt configuration: its own source list, package lists and no shared caches,
    # so the system's apt state is not touched.
    o=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$tmp/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)
    ((IS_ROOT)) && o+=(-o APT::Sandbox::User=root)
    log "fetching the pgvector source package from Debian trixie ($mirror)"
    apt-get "${o[@]}" -q update >"$tmp/apt-update.log" 2>&1 ||
        {
            cat "$tmp/apt-update.log" >&2
            die "apt-get update for trixie sources failed"
        }
    (cd "$tmp/src" && apt-get "${o[@]}" -q source --download-only pgvector >"$tmp/apt-source.log" 2>&1) ||
        {
            cat "$tmp/apt-source.log" >&2
            die "apt-get source pgvector failed"
        }
    orig=$(find "$tmp/src" -maxdepth 1 -name 'pgvector_*.orig.tar.*' | head -n1)
    [[ -n $orig ]] || die "no pgvector orig tarball in the trixie source package"
    ver=${orig##*/pgvector_}
    ver=${ver%%.orig.tar.*}
    version_ge "$ver" "$PGVECTOR_MIN" || die "trixie has pgvector $ver, need >= $PGVECTOR_MIN"
    log "building pgvector $ver against PostgreSQL $M"
    tar -xf "$orig" -C "$tmp/build" --strip-components=1
    # OPTFLAGS="": no -march=native, like Debian's own build (the result stays portable).
    make -C "$tmp/build" -s -j"$(nproc)" PG_CONFIG="$BIN/pg_config" OPTFLAGS="" >"$tmp/build.log" 2>&1 ||
        {
            tail -n 50 "$tmp/build.log" >&2
            die "pgvector build failed"
        }
    as_root make -C "$tmp/build" -s PG_CONFIG="$BIN/pg_config" OPTFLAGS="" install >/dev/null
    CHANGED=1
}

ensure_pgvector() {
    local have
    have=$(vector_version)
    if [[ -n $have ]] && version_ge "$have" "$PGVECTOR_MIN"; then
        log "pgvector $have: present"
        return 0
    fi
    local pkg=postgresql-$M-pgvector
    if ! has_candidate "$pkg"; then apt_update_once; fi
    if has_candidate "$pkg"; then
        apt_install "$pkg"
    elif [[ $mode == image ]]; then
        die "$pkg has no apt candidate in this image"
    else
        log "$pkg is not packaged for this distribution: building from source"
        build_pgvector_from_trixie_source
    fi
    have=$(vector_version)
    if [[ -z $have ]] || ! version_ge "$have" "$PGVECTOR_MIN"; then
        die "pgvector ${have:-missing} after install, need >= $PGVECTOR_MIN"
    fi
    log "pgvector $have: installed"
}

# --- pgmq -----------------------------------------------------------------------------------
pgmq_control() {
    cat <<EOF
# pgmq $PGMQ_EXT_VERSION: the pure-SQL install script shipped in the PyPI package pgmq==$PGMQ_PY_VERSION,
# installed as an extension by pgingest's scripts/install-system.sh.
comment = 'A lightweight message queue. Like AWS SQS and RSMQ but on Postgres.'
default_version = '$PGMQ_EXT_VERSION'
schema = 'pgmq'
relocatable = false
superuser = false
EOF
}

find_pgmq_sql_dir() { # sets PGMQ_SRC to a directory holding pgmq.sql and VERSION
    local d
    if [[ -n ${PGMQ_WHEEL:-} ]]; then
        [[ -f $PGMQ_WHEEL ]] || die "PGMQ_WHEEL=$PGMQ_WHEEL: no such file"
        unzip_pgmq "$PGMQ_WHEEL"
        return
    fi
    # The project's virtualenv, when it has exactly pgmq==1.1.4.
    for d in "$ROOT"/.venv/lib/python3*/site-packages; do
        if [[ -d $d/pgmq-$PGMQ_PY_VERSION.dist-info && -f $d/pgmq/sql/pgmq.sql ]]; then
            log "pgmq $PGMQ_PY_VERSION: taken from $d"
            PGMQ_SRC=$d/pgmq/sql
            return
        fi
    done
    local cache=$CACHE/wheels whl
    whl=$(find "$cache" -maxdepth 1 -name "pgmq-$PGMQ_PY_VERSION-*.whl" 2>/dev/null | head -n1 || true)
    if [[ -z $whl ]]; then
        mkdir -p "$cache"
        local py=python3
        if ! "$py" -m pip --version >/dev/null 2>&1; then
            apt_install python3-pip
            py=/usr/bin/python3
        fi
        log "pgmq: pip download pgmq==$PGMQ_PY_VERSION into $cache"
        PIP_ROOT_USER_ACTION=ignore "$py" -m pip download -q --disable-pip-version-check \
            --no-deps --only-binary=:all: --dest "$cache" "pgmq==$PGMQ_PY_VERSION" >&2
        whl=$(find "$cache" -maxdepth 1 -name "pgmq-$PGMQ_PY_VERSION-*.whl" | head -n1)
        [[ -n $whl ]] || die "pip download did not produce a pgmq $PGMQ_PY_VERSION wheel"
    fi
    unzip_pgmq "$whl"
}

unzip_pgmq() { # unzip_pgmq WHEEL: extract pgmq/sql/{pgmq.sql,VERSION}, set PGMQ_SRC to their dir
    local py=python3
    new_tmpdir pgmq
    command -v "$py" >/dev/null || py=/usr/bin/python3
    log "pgmq: unpacking ${1##*/}"
    "$py" - "$1" "$NEWTMP" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("pgmq/sql/pgmq.sql", "pgmq/sql/VERSION"):
        z.extract(name, sys.argv[2])
PY
    PGMQ_SRC=$NEWTMP/pgmq/sql
}

ensure_pgmq() {
    local ext control
    ext=$(pg_config_get sharedir)/extension
    control=$ext/pgmq.control
    if [[ -f $ext/pgmq--$PGMQ_EXT_VERSION.sql && -f $control ]] && cmp -s "$control" <(pgmq_control); then
        log "pgmq $PGMQ_EXT_VERSION: present"
        return 0
    fi
    local src ver
    find_pgmq_sql_dir
    src=$PGMQ_SRC
    ver=$(tr -d '[:space:]' <"$src/VERSION")
    [[ $ver == "$PGMQ_EXT_VERSION" ]] ||
        die "pgmq==$PGMQ_PY_VERSION ships extension version $ver, expected $PGMQ_EXT_VERSION"
    new_tmpdir pgmqctl
    pgmq_control >"$NEWTMP/pgmq.control"
    as_root install -m 0644 "$src/pgmq.sql" "$ext/pgmq--$ver.sql"
    as_root install -m 0644 "$NEWTMP/pgmq.control" "$control"
    CHANGED=1
    log "pgmq $ver: installed into $ext"
}

# --- promtool -------------------------------------------------------------------------------
# Debian ships promtool only inside the prometheus package, whose installation adds a system user
# and starts (or, without systemd, fails to start) a Prometheus server. The rules' checks need the
# tool alone: the package is downloaded (apt-get download, the system's own sources) and only
# usr/bin/promtool is taken out of it (a static Go program but for libc).
PROMTOOL=${PROMTOOL_DEST:-/usr/local/bin/promtool}
ensure_promtool() {
    local have
    if have=$(promtool --version 2>/dev/null | head -n1) && [[ -n $have ]]; then
        log "promtool: present (${have#promtool, })"
        return 0
    fi
    if ! has_candidate prometheus; then apt_update_once; fi
    has_candidate prometheus || die "no apt candidate for the prometheus package (promtool)"
    new_tmpdir promtool
    chmod 755 "$NEWTMP"
    log "promtool: apt-get download prometheus (only usr/bin/promtool is installed)"
    local o=()
    ((IS_ROOT)) && o+=(-o APT::Sandbox::User=root)
    (cd "$NEWTMP" && apt-get "${o[@]}" -q download prometheus >"$NEWTMP/download.log" 2>&1) || {
        cat "$NEWTMP/download.log" >&2
        die "apt-get download prometheus failed"
    }
    local deb
    deb=$(find "$NEWTMP" -maxdepth 1 -name 'prometheus_*.deb' | head -n1)
    [[ -n $deb ]] || die "apt-get download prometheus produced no .deb"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$NEWTMP" ./usr/bin/promtool ||
        die "no usr/bin/promtool in ${deb##*/}"
    "$NEWTMP/usr/bin/promtool" --version >/dev/null 2>&1 || die "the extracted promtool does not run"
    as_root install -D -m 0755 "$NEWTMP/usr/bin/promtool" "$PROMTOOL"
    log "promtool: installed $PROMTOOL ($("$PROMTOOL" --version 2>&1 | head -n1))"
}

# --- verification in a scratch cluster ------------------------------------------------------
verify_extensions() {
    local tmp port=5499 out
    new_tmpdir verify
    tmp=$NEWTMP
    chmod 755 "$tmp"
    ((IS_ROOT)) && chown postgres:postgres "$tmp"
    log "checking the extensions in a scratch cluster"
    as_pg "$BIN/initdb" -D "$tmp/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync \
        >"$tmp/initdb.log" 2>&1 || {
        cat "$tmp/initdb.log" >&2
        die "initdb failed"
    }
    SCRATCH_PGDATA=$tmp/data
    as_pg "$BIN/pg_ctl" -D "$tmp/data" -l "$tmp/server.log" -w -t 60 \
        -o "-c listen_addresses='' -k $tmp -p $port -c fsync=off" start >/dev/null || {
        cat "$tmp/server.log" >&2
        die "scratch server did not start"
    }
    out=$("$BIN/psql" -X -h "$tmp" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt 2>&1 <<'SQL'
CREATE DATABASE scratch;
\c scratch
CREATE EXTENSION vector;
CREATE EXTENSION pgmq;
CREATE EXTENSION plpython3u;
DO $$
import numpy, requests  # PL/Python runs the system Python: these must be importable there
$$ LANGUAGE plpython3u;
SELECT pgmq.create('pgingest_verify');
SELECT pgmq.send('pgingest_verify', '{"ok": true}') > 0;
SELECT l2_normalize('[3,4]'::vector)::text, '[1,2]'::halfvec::text;
SELECT string_agg(extname || ' ' || extversion, ', ' ORDER BY extname) FROM pg_extension;
SQL
    ) || {
        printf '%s\n' "$out" >&2
        die "extension check failed"
    }
    as_pg "$BIN/pg_ctl" -D "$tmp/data" -m fast -w stop >/dev/null
    SCRATCH_PGDATA=""
    log "ok: $(printf '%s\n' "$out" | tail -n1)"
}

# Sourced (tests/test_system_scripts.py): the functions only.
if [[ ${BASH_SOURCE[0]} != "$0" ]]; then return 0; fi

# --- main -----------------------------------------------------------------------------------
codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-unknown}") || codename=unknown
log "Debian $(cat /etc/debian_version 2>/dev/null || echo '?') ($codename), PostgreSQL $M, mode $mode"

if [[ $mode == native ]]; then
    pkgs=(postgresql-server-dev-"$M" postgresql-plpython3-"$M" build-essential
        python3-numpy python3-requests python3-venv python3-pip)
    [[ -x $BIN/postgres ]] || pkgs=(postgresql-"$M" "${pkgs[@]}")
else
    [[ -x $BIN/postgres ]] || die "no PostgreSQL $M server in this image ($BIN/postgres)"
    pkgs=(postgresql-plpython3-"$M" python3-numpy python3-requests)
fi
apt_install "${pkgs[@]}"
[[ -x $BIN/postgres ]] || die "no PostgreSQL $M server after install ($BIN/postgres)"

ensure_pgvector
ensure_pgmq
if [[ $mode == native ]]; then ensure_promtool; fi

if ((verify)); then
    stamp=$STAMPS/system-pg$M.ok
    fingerprint="pg=$M vector=$(vector_version) pgmq=$PGMQ_EXT_VERSION mode=$mode"
    if ((CHANGED == 0 && force_verify == 0)) && [[ -f $stamp && $(cat "$stamp") == "$fingerprint" ]]; then
        log "extensions verified before ($stamp): nothing to do"
    else
        verify_extensions
        mkdir -p "$STAMPS"
        echo "$fingerprint" >"$stamp"
    fi
fi
# apt may have replaced the server binary under a running private cluster: restart those.
if [[ $mode == native ]]; then
    "$ROOT/scripts/pgcluster.sh" refresh
    "$ROOT/scripts/pgcluster.sh" refresh-second
fi
log "done"
