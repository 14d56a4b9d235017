#!/bin/sh
# The canary for the etcd-net cluster (chaos/etcd/partition-member.yaml), whose members the
# host cannot reach: sequence-numbered keys written through `docker exec` into a member and
# etcd's v3 HTTP gateway (busybox wget), each counted only once acknowledged; on SIGTERM
# (the runner stops the workload after recovery) every acknowledged key is read back.
# Exit 0 when none is lost, 1 when some are (they are listed), 2 when nothing could be
# written at all. Runs in the drill file's folder; needs docker, timeout, base64 and mktemp.
set -u

MEMBERS="etcd-net0 etcd-net1 etcd-net2"
PREFIX="operator-canary/$(date -u +%Y%m%dT%H%M%SZ)-$$"
ACKED=$(mktemp "${TMPDIR:-/tmp}/net-canary.XXXXXX")
STOP=0
trap 'STOP=1' TERM INT

b64() { printf %s "$1" | base64 | tr -d '\n'; }

# POST $2 to path $1 of the first member that answers; the reply on stdout.
post() {
	for m in $MEMBERS; do
		# busybox's own wget -T crashes (Debian's static busybox 1.35); timeout(1) bounds it.
		if out=$(timeout 3 docker exec "$m" /bin/busybox wget -q -O - \
			--post-data "$2" "http://127.0.0.1:2379$1" 2>/dev/null); then
			printf '%s\n' "$out"
			return 0
		fi
	done
	return 1
}

n=0
while [ "$STOP" -eq 0 ]; do
	n=$((n + 1))
	key="$PREFIX/$(printf %08d "$n")"
	body="{\"key\":\"$(b64 "$key")\",\"value\":\"$(b64 "$n")\"}"
	# A reply with a header revision is an acknowledged (committed) write.
	if post /v3/kv/put "$body" | grep -q '"revision"'; then
		printf '%s\n' "$key" >>"$ACKED"
	fi
	sleep 0.2
done

acked=$(wc -l <"$ACKED")
lost=0
while read -r key; do
	if ! post /v3/kv/range "{\"key\":\"$(b64 "$key")\"}" | grep -q '"kvs"'; then
		echo "lost: $key"
		lost=$((lost + 1))
	fi
done <"$ACKED"
rm -f "$ACKED"
echo "net-canary: $n writes, $acked acknowledged, $lost lost"
[ "$acked" -gt 0 ] || exit 2
[ "$lost" -eq 0 ]
