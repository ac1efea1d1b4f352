#!/bin/bash
# Container health check for pgsat: exit 0 only when GET /readyz answers 200.
#
# The runtime image carries no curl/wget on purpose (smaller, fewer CVEs);
# bash's built-in /dev/tcp is enough for one plain-HTTP request to the local
# endpoint. The port comes from HTTP_LISTEN_ADDR (default 0.0.0.0:5135), so
# the check follows the configuration. Exit 1 on anything else: connection
# refused, timeout, a 503 (replication not connected / listeners not
# accepting) or a malformed answer.
set -u
addr="${HTTP_LISTEN_ADDR:-0.0.0.0:5135}"
port="${addr##*:}"
case "$port" in
  '' | *[!0-9]*) echo "healthcheck: cannot read a port from HTTP_LISTEN_ADDR=$addr" >&2; exit 1 ;;
esac
host="${PGSAT_HEALTHCHECK_HOST:-127.0.0.1}"
{ exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || {
  echo "healthcheck: nothing accepts on $host:$port" >&2
  exit 1
}
printf 'GET /readyz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$host" >&3 || exit 1
# Status line: HTTP/1.1 200 OK
IFS=' ' read -r -t 5 _version code _rest <&3 || exit 1
exec 3<&-
if [ "$code" = "200" ]; then
  exit 0
fi
echo "healthcheck: /readyz answered ${code:-nothing}" >&2
exit 1
