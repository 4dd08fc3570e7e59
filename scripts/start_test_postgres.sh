#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster on 127.0.0.1 for the service tests, then print the export line.
# Safe to run again: it reuses the cluster folder and a running server.
#   COLDPROMPT_PG_DIR   cluster folder (default /tmp/coldprompt-test-postgres)
#   COLDPROMPT_PG_PORT  TCP port on 127.0.0.1 (default 54329)
# Needs the PostgreSQL server binaries (Debian/Ubuntu: apt-get install -y postgresql).
# Stop it with: pg_ctl -D "$COLDPROMPT_PG_DIR" stop   (as the cluster's owner)
set -euo pipefail
dir="${COLDPROMPT_PG_DIR:-/tmp/coldprompt-test-postgres}"
port="${COLDPROMPT_PG_PORT:-54329}"
database=coldprompt_test

bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
if [ -z "$bin" ]; then
    bin="$(dirname "$(command -v pg_ctl || true)")"
fi
if [ ! -x "$bin/pg_ctl" ]; then
    echo "PostgreSQL server binaries not found; install them (Debian/Ubuntu: apt-get install -y postgresql)" >&2
    exit 1
fi

# initdb and postgres refuse to run as root, so root runs them as the postgres system user.
as_owner=()
if [ "$(id -u)" = 0 ]; then
    as_owner=(runuser -u postgres --)
fi

mkdir -p "$dir"
if [ "$(id -u)" = 0 ]; then
    chown postgres: "$dir"
fi
chmod 700 "$dir"

if [ ! -f "$dir/PG_VERSION" ]; then
    # trust authentication is acceptable here only because the server listens on 127.0.0.1 alone.
    "${as_owner[@]}" "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --no-locale >"$dir.initdb.log"
fi

if ! "${as_owner[@]}" "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    "${as_owner[@]}" "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir" start >/dev/null
fi

exists="$("$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$database'")"
if [ "$exists" != 1 ]; then
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$database"
fi

echo "export COLDPROMPT_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$port/$database"
