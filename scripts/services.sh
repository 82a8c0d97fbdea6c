#!/usr/bin/env bash
# Make sure the services Conveyor needs answer: Redis always, PostgreSQL for the tests.
# Finds them, or starts them where this machine has them installed, or says how to get them.
set -u
REDIS_HOST=${CONVEYOR_REDIS_HOST:-127.0.0.1}
REDIS_PORT=${CONVEYOR_REDIS_PORT:-6379}
NEED_PG=${CONVEYOR_REQUIRE_POSTGRES:-1}
mkdir -p var

redis_up() {
  if command -v redis-cli >/dev/null 2>&1; then
    redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG
  else
    (exec 3<>"/dev/tcp/$REDIS_HOST/$REDIS_PORT" && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null
  fi
}

if redis_up; then
  echo "redis: answering on $REDIS_HOST:$REDIS_PORT"
elif command -v redis-server >/dev/null 2>&1; then
  echo "redis: not running; starting a private redis-server on $REDIS_HOST:$REDIS_PORT (data in var/)"
  redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$PWD/var" --logfile "$PWD/var/redis.log" --pidfile "$PWD/var/redis.pid"
  for _ in $(seq 50); do redis_up && break; sleep 0.1; done
  redis_up || { echo "redis: failed to start; see var/redis.log" >&2; exit 1; }
else
  cat >&2 <<MSG
redis: nothing answers on $REDIS_HOST:$REDIS_PORT and redis-server is not installed.
  Install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis),
  or run one in Docker: docker run -d -p 6379:6379 redis:7, then run this again.
MSG
  exit 1
fi

[ "$NEED_PG" = "1" ] || exit 0
pg_up() {
  if command -v pg_isready >/dev/null 2>&1; then pg_isready -q -h 127.0.0.1 -p 5432; else
    (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; fi
}
if pg_up; then
  echo "postgresql: answering on 127.0.0.1:5432"
elif command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  echo "postgresql: not running; starting the local cluster"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 50); do pg_up && break; sleep 0.2; done
  pg_up || { echo "postgresql: failed to start" >&2; exit 1; }
else
  echo "postgresql: not reachable on 127.0.0.1:5432; PostgreSQL tests will be skipped locally" \
       "(set CONVEYOR_TEST_DATABASE_URL to point at one)" >&2
fi
exit 0
