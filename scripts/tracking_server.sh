#!/usr/bin/env bash
# An MLflow tracking server on a throwaway (or long-lived) PostgreSQL cluster, with a local artifact store.
#
#   scripts/tracking_server.sh start  [--dir DIR] [--port P] [--pg-port Q] [--artifacts DIR] [--workers N]
#                                     [--host H] [--allowed-hosts LIST] [--timeout S] [--schema-cache FILE]
#   scripts/tracking_server.sh stop   [--dir DIR]
#   scripts/tracking_server.sh status [--dir DIR]
#
# start: initdb (once) in DIR/pg, start Debian's PostgreSQL on 127.0.0.1:Q (unix socket in DIR/pg), create the
# database "mlflow", start `mlflow server --workers N` on H:P with artifacts proxied to --artifacts (default
# DIR/artifacts), wait for /health and print the tracking URI (http://H:P) as the last line of stdout.
# start is idempotent: what already runs is kept; a dead mlflow server is started again on the port it had
# (DIR/mlflow.port), so `start` after a crash restarts it where clients expect it.
# stop: stops the mlflow server (its whole process group) and PostgreSQL; the data in DIR stays.
# PostgreSQL refuses to run as root: as root the cluster runs as the "postgres" user (DIR must be reachable by
# it: use a DIR under a world-traversable path such as /srv or /tmp, not /root); otherwise as the current user.
# Environment: MLFLOW_SERVER_ENABLE_JOB_EXECUTION (default false here), MLFLOW (command, default: `python -m mlflow` of $PYTHON, default python3), PG_BIN (folder of
# initdb/pg_ctl; default: found on PATH or in /usr/lib/postgresql/*/bin).
# --schema-cache FILE: MLflow creates its tables on a fresh database (~20 s of migrations); with this option a
# fresh database is loaded from FILE (a pg_dump of a migrated one) when FILE exists, and FILE is written after
# the first successful start when it does not (the tests use it to start a second cluster quickly).
# Exit codes: 0 ok; 2 bad usage; 3 PostgreSQL not installed; 4 a service did not come up (its log is printed).
set -euo pipefail

cmd=${1:-}
[ $# -gt 0 ] && shift
DIR=${WT_TRACKING_DIR:-./wt_tracking}
PORT="" PG_PORT="" ARTIFACTS="" WORKERS=1 HOST=127.0.0.1 ALLOWED_HOSTS="" TIMEOUT=120 SCHEMA_CACHE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --pg-port) PG_PORT=$2; shift 2 ;;
    --artifacts) ARTIFACTS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --host) HOST=$2; shift 2 ;;
    --allowed-hosts) ALLOWED_HOSTS=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --schema-cache) SCHEMA_CACHE=$2; shift 2 ;;
    *) echo "tracking_server.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$cmd" in start | stop | status) ;; *)
  echo "usage: tracking_server.sh start|stop|status [--dir DIR] [--port P] [--pg-port Q] [--artifacts DIR]" >&2
  exit 2 ;;
esac

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
PGDATA="$DIR/pg"
PY=${PYTHON:-python3}
MLFLOW=${MLFLOW:-"$PY -m mlflow"}

log() { echo "tracking_server: $*" >&2; }

find_pg_bin() {
  if [ -n "${PG_BIN:-}" ]; then echo "$PG_BIN"; return; fi
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v pg_ctl)")"; return
  fi
  local d
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/pg_ctl" ]; then echo "$d"; return; fi
  done
  echo ""
}

# run a PostgreSQL binary as the cluster's owner (postgres when we are root)
as_pg() {
  if [ "$(id -u)" = "0" ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

mlflow_alive() {
  [ -f "$DIR/mlflow.pid" ] && kill -0 "$(cat "$DIR/mlflow.pid")" 2>/dev/null
}

health() {  # 0 when GET /health answers 200
  curl -fsS -m 2 "http://$1:$2/health" >/dev/null 2>&1
}

PGB=$(find_pg_bin)

case "$cmd" in
start)
  if [ -z "$PGB" ] || [ ! -x "$PGB/pg_ctl" ] || [ ! -x "$PGB/initdb" ]; then
    log "PostgreSQL not found (initdb/pg_ctl not on PATH nor in /usr/lib/postgresql/*/bin):" \
      "install it (Debian: apt-get install postgresql) or set PG_BIN"
    exit 3
  fi
  mkdir -p "$PGDATA"
  if [ "$(id -u)" = "0" ]; then
    id postgres >/dev/null 2>&1 || { log "running as root but there is no 'postgres' user"; exit 3; }
    chown postgres: "$PGDATA"
    chmod 700 "$PGDATA"
    if ! runuser -u postgres -- test -w "$PGDATA"; then
      log "the postgres user cannot reach $PGDATA (a parent folder is private): use a --dir it can traverse"
      exit 2
    fi
  fi
  # ---- PostgreSQL ----
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    as_pg "$PGB/initdb" -D "$PGDATA" -U mlflow --auth=trust -E UTF8 >"$DIR/initdb.log" 2>&1 \
      || { cat "$DIR/initdb.log" >&2; log "initdb failed"; exit 4; }
  fi
  if [ -z "$PG_PORT" ]; then
    if [ -f "$DIR/pg.port" ]; then PG_PORT=$(cat "$DIR/pg.port"); else PG_PORT=$(free_port); fi
  fi
  if ! as_pg "$PGB/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    as_pg "$PGB/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t "$TIMEOUT" \
      -o "-p $PG_PORT -k $PGDATA -c listen_addresses=127.0.0.1" start >/dev/null \
      || { tail -20 "$PGDATA/server.log" >&2; log "PostgreSQL did not start"; exit 4; }
  else
    PG_PORT=$(sed -n 4p "$PGDATA/postmaster.pid")
  fi
  echo "$PG_PORT" >"$DIR/pg.port"
  PSQL=("$PGB/psql" -h "$PGDATA" -p "$PG_PORT" -U mlflow -d postgres -tAq)
  if [ "$(as_pg "${PSQL[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'mlflow'")" != "1" ]; then
    as_pg "${PSQL[@]}" -c "CREATE DATABASE mlflow" >/dev/null
    if [ -n "$SCHEMA_CACHE" ] && [ -s "$SCHEMA_CACHE" ]; then  # MLflow's tables, already migrated
      as_pg "$PGB/psql" -h "$PGDATA" -p "$PG_PORT" -U mlflow -d mlflow -q -v ON_ERROR_STOP=1 \
        <"$SCHEMA_CACHE" >/dev/null || { log "loading $SCHEMA_CACHE failed"; exit 4; }
    fi
  fi
  BACKEND="postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/mlflow"
  echo "$BACKEND" >"$DIR/backend.uri"
  # ---- MLflow server ----
  if [ -z "$PORT" ]; then
    if [ -f "$DIR/mlflow.port" ]; then PORT=$(cat "$DIR/mlflow.port"); else PORT=$(free_port); fi
  fi
  if [ -z "$ARTIFACTS" ]; then
    if [ -f "$DIR/artifacts.path" ]; then ARTIFACTS=$(cat "$DIR/artifacts.path"); else ARTIFACTS="$DIR/artifacts"; fi
  fi
  mkdir -p "$ARTIFACTS"
  ARTIFACTS=$(cd "$ARTIFACTS" && pwd)
  echo "$ARTIFACTS" >"$DIR/artifacts.path"
  if mlflow_alive && [ "$(cat "$DIR/mlflow.port" 2>/dev/null)" = "$PORT" ]; then
    log "mlflow server already running (pid $(cat "$DIR/mlflow.pid"))"
  else
    if mlflow_alive; then  # running on another port: replace it
      kill -TERM -- "-$(cat "$DIR/mlflow.pid")" 2>/dev/null || true
      sleep 1
    fi
    echo "$PORT" >"$DIR/mlflow.port"
    extra=()
    if [ -n "$ALLOWED_HOSTS" ]; then extra+=(--allowed-hosts "$ALLOWED_HOSTS"); fi
    # setsid: the server and its workers form one process group, stopped together. MLflow's job runner
    # (7 huey consumers, ~1.3 GB) serves GenAI jobs that windtunnel does not use: off unless asked for
    # shellcheck disable=SC2086
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} setsid $MLFLOW server --backend-store-uri "$BACKEND" --serve-artifacts \
      --artifacts-destination "file://$ARTIFACTS" --workers "$WORKERS" --host "$HOST" --port "$PORT" \
      "${extra[@]}" >>"$DIR/mlflow.log" 2>&1 </dev/null &
    echo $! >"$DIR/mlflow.pid"
  fi
  probe=$HOST
  if [ "$probe" = "0.0.0.0" ]; then probe=127.0.0.1; fi
  deadline=$((SECONDS + TIMEOUT))
  until health "$probe" "$PORT"; do
    if ! mlflow_alive; then
      tail -30 "$DIR/mlflow.log" >&2; log "mlflow server exited"; exit 4
    fi
    if [ $SECONDS -ge $deadline ]; then
      tail -30 "$DIR/mlflow.log" >&2; log "mlflow server not healthy after ${TIMEOUT}s"; exit 4
    fi
    sleep 0.5
  done
  echo "http://$HOST:$PORT" >"$DIR/tracking.uri"
  if [ -n "$SCHEMA_CACHE" ] && [ ! -s "$SCHEMA_CACHE" ]; then
    as_pg "$PGB/pg_dump" -h "$PGDATA" -p "$PG_PORT" -U mlflow --no-owner mlflow >"$SCHEMA_CACHE.tmp" \
      && mv "$SCHEMA_CACHE.tmp" "$SCHEMA_CACHE" || rm -f "$SCHEMA_CACHE.tmp"
  fi
  log "backend $BACKEND, artifacts $ARTIFACTS, log $DIR/mlflow.log"
  echo "http://$HOST:$PORT"
  ;;
stop)
  if mlflow_alive; then
    pid=$(cat "$DIR/mlflow.pid")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$DIR/mlflow.pid"
  if [ -n "$PGB" ] && [ -f "$PGDATA/postmaster.pid" ]; then
    as_pg "$PGB/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true
  fi
  log "stopped (data kept in $DIR)"
  ;;
status)
  if mlflow_alive; then echo "mlflow: running (pid $(cat "$DIR/mlflow.pid"), $(cat "$DIR/tracking.uri" 2>/dev/null))"
  else echo "mlflow: stopped"; fi
  if [ -n "$PGB" ] && [ -f "$PGDATA/PG_VERSION" ] && as_pg "$PGB/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    echo "postgresql: running (port $(cat "$DIR/pg.port" 2>/dev/null))"
  else echo "postgresql: stopped"; fi
  ;;
esac
