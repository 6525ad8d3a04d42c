#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests, in a directory of its own.
#
#   scripts/pg-cluster.sh start DIR   initdb in DIR/data, start it on a free
#                                     port of 127.0.0.1 only (trust auth for
#                                     the user `sluice`), print its URL
#   scripts/pg-cluster.sh env DIR     print SLUICE_PG_URL=<url> of a started one
#   scripts/pg-cluster.sh stop DIR    stop it (DIR is left for the caller)
#
# PostgreSQL refuses to run as root: as root the cluster runs as the
# `postgres` OS user (Debian's package creates it; created here if not),
# and DIR is handed to that user. Durability is off (fsync, synchronous
# commit, full-page writes): the data is thrown away with DIR.
# With PG_PASSWORD_FILE=FILE in the environment, `start` makes a cluster
# whose TCP connections need the password in FILE (scram-sha-256) instead
# of trusting them: for the tests of where Sluice takes passwords from.
# Exit status 3: PostgreSQL is not installed (run scripts/setup-postgres.sh).
set -euo pipefail

# The database user of the cluster, trusted on 127.0.0.1 only.
PG_USER=sluice
# Ports tried before giving up (another process may take a free port
# between choosing it and the server binding it).
START_ATTEMPTS=5

usage() { echo "usage: $0 start|stop|env DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$2

bindir=""
for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && bindir=$d
done
if [ -z "$bindir" ]; then
    echo "pg-cluster: PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run scripts/setup-postgres.sh" >&2
    exit 3
fi

# Run a server binary as the cluster's OS user.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
        || echo $(( 20000 + RANDOM % 40000 ))
}

case "$cmd" in
start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
        chown postgres "$dir"
        # The server's user must reach DIR through its parents (a private
        # temp dir of root's, say).
        parent=$(dirname "$dir")
        as_owner test -x "$parent" || chmod o+x "$parent"
    fi
    auth=(-A trust)
    if [ -n "${PG_PASSWORD_FILE:-}" ]; then
        # initdb reads the file as the server's user: a copy it can read.
        cp "$PG_PASSWORD_FILE" "$dir/pwfile"
        [ "$(id -u)" = 0 ] && chown postgres "$dir/pwfile"
        auth=(--auth-local=trust --auth-host=scram-sha-256 --pwfile="$dir/pwfile")
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_owner "$bindir/initdb" -D "$dir/data" -U "$PG_USER" "${auth[@]}" \
            --no-sync --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || {
            cat "$dir/initdb.log" >&2
            exit 1
        }
    fi
    rm -f "$dir/pwfile"
    for _ in $(seq "$START_ATTEMPTS"); do
        port=$(free_port)
        if as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -s start \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
            >/dev/null 2>&1; then
            url="postgres://$PG_USER@127.0.0.1:$port/postgres"
            echo "$url" >"$dir/url"
            echo "$url"
            exit 0
        fi
    done
    echo "pg-cluster: the server did not start; its log:" >&2
    cat "$dir/server.log" >&2 || true
    exit 1
    ;;
env)
    [ -f "$dir/url" ] || { echo "pg-cluster: no cluster started in $dir" >&2; exit 1; }
    echo "SLUICE_PG_URL=$(cat "$dir/url")"
    ;;
stop)
    [ -f "$dir/data/postmaster.pid" ] || exit 0
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w -s stop
    rm -f "$dir/url"
    ;;
*)
    usage
    ;;
esac
