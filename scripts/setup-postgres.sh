#!/usr/bin/env bash
# Install Debian's PostgreSQL server (initdb, pg_ctl, postgres) for the
# Postgres destination's tests, which start throwaway clusters of their own
# with scripts/pg-cluster.sh. Idempotent: quick when a server is there.
set -euo pipefail
if compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
    && compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null; then
    exit 0
fi
echo "installing PostgreSQL (Debian's postgresql package)" >&2
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || {
    echo "setup-postgres: the postgresql package installed no initdb under /usr/lib/postgresql" >&2
    exit 1
}
