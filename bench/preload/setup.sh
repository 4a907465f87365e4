#!/usr/bin/env bash
# Installs what the preload benchmark needs and is missing: the peer
# allocators (Debian's mimalloc, jemalloc, tcmalloc), the real programs
# (sqlite3, redis-server + redis-benchmark, perl, python3, gcc).
# Idempotent: does nothing when everything is present. Needs root (or sudo).
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "setup.sh: not root and no sudo; install by hand: $*" >&2
    fi
fi

# Alternatives per wanted item: the first package name that apt knows wins.
wanted=(
    "libmimalloc3 libmimalloc2.0"
    "libjemalloc2"
    "libtcmalloc-minimal4 libtcmalloc-minimal4t64 libgoogle-perftools4"
    "sqlite3"
    "redis-server"
    "redis-tools"
    "perl"
    "python3"
    "gcc"
)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for alts in "${wanted[@]}"; do
    have=""
    for p in $alts; do
        if installed "$p"; then have=1; break; fi
    done
    [ -n "$have" ] || missing+=("$alts")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "setup.sh: everything installed"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || echo "setup.sh: apt-get update failed" >&2

to_install=()
for alts in "${missing[@]}"; do
    pick=""
    for p in $alts; do
        if apt-cache show "$p" >/dev/null 2>&1; then pick="$p"; break; fi
    done
    if [ -n "$pick" ]; then
        to_install+=("$pick")
    else
        echo "setup.sh: no package for: $alts" >&2
    fi
done

status=0
if [ ${#to_install[@]} -gt 0 ]; then
    echo "setup.sh: installing ${to_install[*]}"
    if ! $SUDO apt-get install -y -qq --no-install-recommends "${to_install[@]}"; then
        # One bad package should not block the others.
        for p in "${to_install[@]}"; do
            $SUDO apt-get install -y -qq --no-install-recommends "$p" || {
                echo "setup.sh: could not install $p" >&2
                status=1
            }
        done
    fi
fi
# redis-server is started by hand by the benchmark; the package's own
# service (if any init system started it) is left alone.
exit $status
