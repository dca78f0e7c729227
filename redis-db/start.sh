#!/bin/sh
# redis-db's start (docker-compose.yaml): the ACL users of redis-db/users.acl with the passwords
# of the environment, then redis-server with the arguments given (compose's `command`).
#
#   REDIS_PASSWORD          energy-worker's user
#   REDIS_WEBHOOK_PASSWORD  the webhook's user
#   REDIS_ACL_DIR           where the rendered ACL goes (default /run/redis, a tmpfs)
#
# Only each password's SHA-256 is written (the ACL's #<hash> form), and the passwords (and
# REDISCLI_AUTH, for redis-cli in the container) leave the environment before redis-server starts. A missing or placeholder password stops the start
# with one line naming it (exit 2).
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
dir="${REDIS_ACL_DIR:-/run/redis}"

fail() {
	echo "redis-db: $*" >&2
	exit 2
}

for var in REDIS_PASSWORD REDIS_WEBHOOK_PASSWORD; do
	eval "value=\${$var:-}"
	# shellcheck disable=SC2154 # set by the eval above
	case "$value" in
	'') fail "$var is not set: set it in .env (see .env.example)" ;;
	change-me*) fail "$var is still the placeholder of .env.example: set a password of your own in .env" ;;
	esac
done
[ "$REDIS_PASSWORD" != "$REDIS_WEBHOOK_PASSWORD" ] ||
	fail "REDIS_PASSWORD and REDIS_WEBHOOK_PASSWORD must differ"

sha256() {
	printf '%s' "$1" | sha256sum | cut -d ' ' -f 1
}

umask 077
mkdir -p "$dir"
# The ACL file format has no comments: drop them and the blank lines.
sed -e '/^#/d' -e '/^[[:space:]]*$/d' \
	-e "s/@ENERGY_WORKER_HASH@/#$(sha256 "$REDIS_PASSWORD")/" \
	-e "s/@WEBHOOK_HASH@/#$(sha256 "$REDIS_WEBHOOK_PASSWORD")/" \
	"$here/users.acl" >"$dir/users.acl"
unset REDIS_PASSWORD REDIS_WEBHOOK_PASSWORD REDISCLI_AUTH value
exec redis-server "$@" --aclfile "$dir/users.acl"
