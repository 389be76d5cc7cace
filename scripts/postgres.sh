#!/usr/bin/env bash
# Starts a PostgreSQL server on 127.0.0.1:5432 with a database for the search tests
# (installing Debian's postgresql package when it is missing), and prints its URL.
# Usage: bash scripts/postgres.sh        (needs root, or sudo, on a Debian-like machine)
set -euo pipefail
USER_NAME=apoptosis
DB_NAME=apoptosis_test
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | grep -q "^$version main"; then
    $SUDO pg_createcluster "$version" main >/dev/null
fi
pg_lsclusters -h | grep -q "^$version main .* online" || $SUDO pg_ctlcluster "$version" main start
as_postgres() { if [ -z "$SUDO" ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }
for _ in $(seq 30); do
    as_postgres psql -qtAc "select 1" >/dev/null 2>&1 && break
    sleep 1
done
if [ "$(as_postgres psql -qtAc "select 1 from pg_roles where rolname='$USER_NAME'")" != 1 ]; then
    as_postgres psql -qc "create role $USER_NAME login password '$USER_NAME'"
fi
if [ "$(as_postgres psql -qtAc "select 1 from pg_database where datname='$DB_NAME'")" != 1 ]; then
    as_postgres createdb -O "$USER_NAME" "$DB_NAME"
fi
echo "postgresql://$USER_NAME:$USER_NAME@127.0.0.1:5432/$DB_NAME"
