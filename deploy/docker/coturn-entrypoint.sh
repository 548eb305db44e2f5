#!/bin/sh
# Renders deploy/coturn/turnserver.conf.template from the environment and runs coturn with it.
# Variables as in deploy/coturn/README.md, with defaults for the optional ones; extra
# arguments go to turnserver (they override the file, e.g. --listening-port).
#   TURN_SECRET (required), TURN_SECRET_PREVIOUS (default TURN_SECRET), TURN_REALM (pixelfleet),
#   PRIVATE_IP (required), PUBLIC_IP (default PRIVATE_IP), MIN_PORT/MAX_PORT (49152/65535),
#   UE_PEER_RANGE (required: first-last or a CIDR such as 10.0.0.0/16), USER_QUOTA (4),
#   TOTAL_QUOTA (2000), MAX_BPS (6250000), TLS_CERT/TLS_KEY (both or neither: without them
#   no TLS listener), LISTEN_PORT (3478), CONF (/tmp/turnserver.conf).
set -eu

fail() { echo "coturn-entrypoint: $*" >&2; exit 2; }

: "${TURN_SECRET:?set TURN_SECRET (the secret signalling signs TURN credentials with)}"
: "${PRIVATE_IP:?set PRIVATE_IP (the address coturn listens and relays on)}"
: "${UE_PEER_RANGE:?set UE_PEER_RANGE (the UE hosts relays may reach: first-last or CIDR)}"
export TURN_SECRET_PREVIOUS="${TURN_SECRET_PREVIOUS:-$TURN_SECRET}"
export TURN_REALM="${TURN_REALM:-pixelfleet}"
export PUBLIC_IP="${PUBLIC_IP:-$PRIVATE_IP}"
export MIN_PORT="${MIN_PORT:-49152}" MAX_PORT="${MAX_PORT:-65535}"
export USER_QUOTA="${USER_QUOTA:-4}" TOTAL_QUOTA="${TOTAL_QUOTA:-2000}" MAX_BPS="${MAX_BPS:-6250000}"
export TLS_CERT="${TLS_CERT:-}" TLS_KEY="${TLS_KEY:-}"
LISTEN_PORT="${LISTEN_PORT:-3478}"
CONF="${CONF:-/tmp/turnserver.conf}"
TEMPLATE="${TEMPLATE:-/etc/coturn/turnserver.conf.template}"

# coturn's allowed-peer-ip takes an address range: a CIDR (as the CDK app passes the VPC's)
# becomes first-last.
quad() { echo "$(( ($1 >> 24) & 255 )).$(( ($1 >> 16) & 255 )).$(( ($1 >> 8) & 255 )).$(( $1 & 255 ))"; }
cidr_to_range() {
    bits="${1#*/}"
    case "$bits" in '' | *[!0-9]*) fail "UE_PEER_RANGE: bad prefix length in $1" ;; esac
    [ "$bits" -le 32 ] || fail "UE_PEER_RANGE: bad prefix length in $1"
    old_ifs=$IFS
    IFS=.
    # shellcheck disable=SC2046 # split the dotted quad on purpose
    set -- $(echo "${1%/*}")
    IFS=$old_ifs
    [ $# -eq 4 ] || fail "UE_PEER_RANGE: not an IPv4 CIDR"
    for octet in "$@"; do
        case "$octet" in '' | *[!0-9]*) fail "UE_PEER_RANGE: not an IPv4 CIDR" ;; esac
        [ "$octet" -le 255 ] || fail "UE_PEER_RANGE: not an IPv4 CIDR"
    done
    size=$(( 1 << (32 - bits) ))
    first=$(( ((($1 << 24) | ($2 << 16) | ($3 << 8) | $4) / size) * size ))
    echo "$(quad "$first")-$(quad $(( first + size - 1 )))"
}
case "$UE_PEER_RANGE" in
*/*) UE_PEER_RANGE=$(cidr_to_range "$UE_PEER_RANGE") ;;
esac
export UE_PEER_RANGE

if [ -n "$TLS_CERT" ] && [ -n "$TLS_KEY" ]; then
    tls_filter='^$'
elif [ -z "$TLS_CERT" ] && [ -z "$TLS_KEY" ]; then
    tls_filter='^(tls-listening-port|cert|pkey)='
else
    fail "set both TLS_CERT and TLS_KEY, or neither"
fi

umask 077
envsubst <"$TEMPLATE" |
    grep -Ev "$tls_filter" |
    sed -e "s|^listening-port=.*|listening-port=$LISTEN_PORT|" \
        -e "s|^pidfile=.*|pidfile=${CONF%/*}/turnserver.pid|" >"$CONF"
if [ -z "$TLS_CERT" ]; then
    printf 'no-tls\n' >>"$CONF"
fi
# the package's user database (/var/lib/turn) belongs to another user; static secrets need none
printf 'userdb=%s\n' "${CONF%/*}/turndb" >>"$CONF"
exec turnserver -c "$CONF" "$@"
