#!/usr/bin/env bash
# energy-worker's entrypoint, modelled on the official postgres image's docker-entrypoint.sh.
# The container runs it; so does `make run` (devtools/devrun.py) on a host.
#
#   1. POSTGRES_* settings, REDIS_PASSWORD, GRAFANA_DB_PASSWORD, GOOGLE_WEBHOOK_URL and
#      MQTT_PASSWORD (each may come from a file: POSTGRES_PASSWORD_FILE=/run/secrets/...)
#   2. render etc/postgres.ini.template to $POSTGRES_INI (default /etc/postgres.ini), mode 0600
#   3. wait for PostgreSQL and Redis (POSTGRES_WAIT_SECONDS / REDIS_WAIT_SECONDS, default 600)
#   4. migrate the schema, write the meter config (python -m energy_worker.programs.set_up)
#   5. the optional programs: the publisher only with MQTT_HOST (ew_optional_programs)
#   6. each program's secrets into a file of the run dir (ew_program_secrets), then this script
#      again in its own place (exec) without any secret in its environment, which
#   7. runs supervisord in the foreground, as a child (see ew_run_supervisord), and exits 0 only
#      after the `stop` key
#
# With arguments that are not supervisord options it runs them instead (e.g. `sh` to look around).
# Sourcing this file only defines the functions (the tests do that).
set -Eeo pipefail

APP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# One line per event, in the processes' format: <ISO time> <process> <LEVEL> <message>.
ew_log() {
	local level="$1"
	shift
	printf '%s entrypoint %s %s\n' "$(date '+%Y-%m-%dT%H:%M:%S%z')" "$level" "$*" >&2
}

ew_error() {
	ew_log ERROR "$@"
	exit "${EW_EXIT:-2}"
}

# usage: file_env VAR [DEFAULT]
#    ie: file_env 'POSTGRES_PASSWORD' 'example'
# (allows the value of "$VAR" to come from the file named by "$VAR_FILE", for docker secrets)
file_env() {
	local var="$1"
	local fileVar="${var}_FILE"
	local def="${2:-}"
	if [ "${!var:-}" ] && [ "${!fileVar:-}" ]; then
		ew_error "both $var and $fileVar are set (but are exclusive)"
	fi
	local val="$def"
	if [ "${!var:-}" ]; then
		val="${!var}"
	elif [ "${!fileVar:-}" ]; then
		[ -r "${!fileVar}" ] || ew_error "$fileVar names ${!fileVar}, which cannot be read"
		# $(<file) drops trailing newlines, as the postgres image does: a secret file written by
		# an editor ends in one, and a password cannot hold a line break anyway.
		val="$(<"${!fileVar}")"
	fi
	export "$var"="$val"
	unset "$fileVar"
}

# Settings from the environment, defaults filled in.
ew_setup_env() {
	file_env POSTGRES_USER
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_DB
	file_env POSTGRES_HOST postgres-db
	file_env POSTGRES_PORT 5432
	# TLS to a PostgreSQL on another host: required and verified (the set-up and the programs)
	file_env POSTGRES_TLS false
	file_env POSTGRES_CA_FILE
	file_env REDIS_PASSWORD
	[ -n "$REDIS_PASSWORD" ] || unset REDIS_PASSWORD
	# Secrets of the set-up (Grafana's read-only role) and of the pusher (a sheet URL may carry
	# a key), which may come from files too.
	file_env GRAFANA_DB_PASSWORD
	file_env GOOGLE_WEBHOOK_URL
	# The publisher's login to the MQTT broker (Home Assistant).
	file_env MQTT_PASSWORD
	[ -n "$MQTT_PASSWORD" ] || unset MQTT_PASSWORD
	export POSTGRES_INI="${POSTGRES_INI:-/etc/postgres.ini}"
	export ENERGY_WORKER_RUN_DIR="${ENERGY_WORKER_RUN_DIR:-$APP_DIR/var/run}"
	# Docstrings and asserts stay out of memory: six processes share a Pi's RAM. (The code is
	# compiled that way ahead: the image's build, `make run`'s set-up.)
	export PYTHONOPTIMIZE="${PYTHONOPTIMIZE:-2}"
	# For the programs' sections that supervisord includes from the run directory, where
	# %(here)s is that directory (etc/supervisor/publisher.conf).
	export ENERGY_WORKER_APP_DIR="$APP_DIR"
	# supervisord.conf's user=: the user it runs as already (no privileges to drop)
	ENERGY_WORKER_UID="$(id -u)"
	export ENERGY_WORKER_UID
	case ":${PYTHONPATH:-}:" in
	*":$APP_DIR/services:"*) ;;
	*) export PYTHONPATH="$APP_DIR/services${PYTHONPATH:+:$PYTHONPATH}" ;;
	esac
}

# The secrets the programs and the set-up may be given, each a variable or a *_FILE.
EW_SECRETS=(POSTGRES_PASSWORD REDIS_PASSWORD GRAFANA_DB_PASSWORD GOOGLE_WEBHOOK_URL MQTT_PASSWORD)
# .env.example's passwords all start so: a server on the home network must never run with one.
EW_PLACEHOLDER='change-me'

# Names every missing required variable in one message, and every placeholder password in one.
ew_check_required() {
	local missing=() placeholders=() var list
	for var in POSTGRES_USER POSTGRES_PASSWORD POSTGRES_DB; do
		[ -n "${!var}" ] || missing+=("$var (or ${var}_FILE)")
	done
	if [ "${#missing[@]}" -gt 0 ]; then
		list="$(printf ', %s' "${missing[@]}")"
		ew_error "missing required environment variables: ${list:2}; set them in .env (see .env.example) or the environment"
	fi
	local checked=(POSTGRES_PASSWORD REDIS_PASSWORD GRAFANA_DB_PASSWORD)
	# MQTT's only where it is used: .env.example's stays harmless while MQTT_HOST is empty
	[ -z "${MQTT_HOST//[[:space:]]/}" ] || checked+=(MQTT_PASSWORD)
	for var in "${checked[@]}"; do
		[[ ${!var:-} != "$EW_PLACEHOLDER"* ]] || placeholders+=("$var")
	done
	if [ "${#placeholders[@]}" -gt 0 ]; then
		list="$(printf ', %s' "${placeholders[@]}")"
		ew_error "still the placeholder password of .env.example: ${list:2}; set a password of your own in .env"
	fi
	[[ $POSTGRES_PORT =~ ^[0-9]+$ ]] || ew_error "POSTGRES_PORT must be a port number"
}

# A value must fit on one line of the ini file. Python's str.splitlines(), which reads it,
# also breaks at \v \f \x1c-\x1e and U+0085 U+2028 U+2029, so those are refused as well.
ew_ini_safe() {
	local name="$1" value="$2" bad
	for bad in $'\n' $'\r' $'\v' $'\f' $'\x1c' $'\x1d' $'\x1e' $'\xc2\x85' $'\xe2\x80\xa8' $'\xe2\x80\xa9'; do
		if [[ $value == *"$bad"* ]]; then
			ew_error "$name contains a line break or separator character, which postgres.ini cannot hold"
		fi
	done
}

# Renders the template line by line: a line `key = ${VAR}` becomes `key = <value of VAR>`,
# written with printf '%s' so that no byte of the value is interpreted (no sed, no envsubst).
ew_render_ini() {
	local template="$APP_DIR/etc/postgres.ini.template" target="$POSTGRES_INI"
	local line key var
	local placeholder='^([A-Za-z_]+) = \$\{([A-Z_]+)\}$'
	[ -r "$template" ] || ew_error "template $template is missing"
	for var in POSTGRES_HOST POSTGRES_PORT POSTGRES_DB POSTGRES_USER POSTGRES_PASSWORD POSTGRES_TLS POSTGRES_CA_FILE; do
		ew_ini_safe "$var" "${!var}"
	done
	mkdir -p "$(dirname "$target")" 2>/dev/null || true
	if ! { [ -e "$target" ] && [ -w "$target" ]; } && ! [ -w "$(dirname "$target")" ]; then
		ew_error "cannot write $target (set POSTGRES_INI to a writable path)"
	fi
	umask 077
	# Written in place: in the image /etc is not writable, the file itself is (see Dockerfile).
	{
		while IFS= read -r line || [ -n "$line" ]; do
			if [[ $line =~ $placeholder ]]; then
				key="${BASH_REMATCH[1]}"
				var="${BASH_REMATCH[2]}"
				[ -n "${!var+set}" ] || ew_error "template needs $var, which is not set"
				printf '%s = %s\n' "$key" "${!var}"
			else
				printf '%s\n' "$line"
			fi
		done <"$template"
	} >"$target"
	chmod 0600 "$target"
	ew_log INFO "wrote $target for $POSTGRES_USER@$POSTGRES_HOST:$POSTGRES_PORT/$POSTGRES_DB"
}

# Runs a start-up step as a child that SIGTERM/SIGINT end at once. As PID 1 of a container this
# shell ignores a signal it has no trap for, and a trap waits for a foreground child: without
# this, `docker stop` during the (up to 10 minute) wait for PostgreSQL would hang.
ew_interruptible() {
	local child status=0
	"$@" &
	child=$!
	trap 'kill -TERM "$child" 2>/dev/null; ew_log INFO "stopped by SIGTERM during start-up"; exit 143' TERM
	trap 'kill -TERM "$child" 2>/dev/null; exit 130' INT
	wait "$child" || status=$?
	trap - TERM INT
	return "$status"
}

ew_wait_for_servers() {
	local status=0
	ew_interruptible python -m energy_worker.programs.wait || status=$?
	# 2: a setting waiting cannot mend, which the wait said in one line: nothing to add
	[ "$status" -ne 2 ] || exit 2
	[ "$status" -eq 0 ] || EW_EXIT=$status ew_error "PostgreSQL or Redis is not usable; see the lines above"
}

ew_apply_schema() {
	ew_interruptible python -m energy_worker.programs.set_up || EW_EXIT=$? ew_error "the set-up (schema migrations, meter config) failed; see the lines above"
}

# Programs that exist only when configured, in the directory supervisord.conf includes
# ($ENERGY_WORKER_RUN_DIR/conf.d): `supervisorctl status`, the HEALTHCHECK, fails for a program
# that is not RUNNING, so a program with nothing to do must not be there at all. Its file is
# written either way (a comment when the program is off): an include that matches nothing is a
# warning of supervisord's at every start, and a file of an earlier run must not stay.
ew_optional_programs() {
	local dir="$ENERGY_WORKER_RUN_DIR/conf.d" host="${MQTT_HOST:-}"
	mkdir -p "$dir"
	if [ -n "${host//[[:space:]]/}" ]; then
		cp "$APP_DIR/etc/supervisor/publisher.conf" "$dir/publisher.conf"
		ew_log INFO "MQTT_HOST is set: the publisher runs (Home Assistant over MQTT)"
	else
		printf '; no [program:publisher]: MQTT_HOST is not set (entrypoint.sh)\n' >"$dir/publisher.conf"
	fi
}

# Each program's secrets, from files of the run dir that supervisord.conf names in that
# program's environment only (REDIS_PASSWORD_FILE for the router, ...): supervisord and PID 1
# hold none. A file per secret, empty when it is not set, mode 0600 in a 0700 folder.
ew_program_secrets() {
	local dir="$ENERGY_WORKER_RUN_DIR/secrets" name file
	(
		umask 077
		mkdir -p "$dir"
		chmod 0700 "$dir"
		for name in REDIS_PASSWORD GOOGLE_WEBHOOK_URL MQTT_PASSWORD; do
			file="$dir/$(printf '%s' "$name" | tr '[:upper:]' '[:lower:]')"
			printf '%s' "${!name:-}" >"$file"
			chmod 0600 "$file"
		done
	)
}

# Runs this script again in its own place (same PID), its environment without any secret: a
# shell's `unset` leaves the initial environment readable in /proc/<pid>/environ, a new program
# image does not. What is left to do there: run supervisord (EW_SUPERVISE).
ew_reexec_without_secrets() {
	unset "${EW_SECRETS[@]}" REDIS_WEBHOOK_PASSWORD
	export EW_SUPERVISE=1
	exec "$APP_DIR/entrypoint.sh" "$@"
}

# The exit listener writes this just before it shuts supervisord down after a `stop`
# (the stop protocol, docs/CONTRACT.md).
EW_STOP_MARKER_NAME=stop-requested

# Records a signal and passes it on to supervisord (trap handler).
ew_forward() {
	EW_SIGNAL="$1"
	EW_TRAPPED=1
	if [ -n "${EW_CHILD:-}" ]; then
		kill -s "$1" "$EW_CHILD" 2>/dev/null || true
	fi
}

# supervisord runs as a child of this shell, not `exec`ed in its place: the exit status must
# tell a `stop` from a SIGTERM, and supervisord exits 0 either way. `docker stop` and a Docker
# daemon shutting down (a reboot of the Pi) send SIGTERM; `restart: on-failure` never restarts
# a container whose last exit was 0 (moby/moby#46465), so after a SIGTERM this exits 143 and the
# container comes back with the daemon. Only a `stop` (the marker file exists) ends with 0.
ew_run_supervisord() {
	local marker="$ENERGY_WORKER_RUN_DIR/$EW_STOP_MARKER_NAME" status
	rm -f "$marker" # a stale one of an earlier run of this container
	EW_SIGNAL=
	EW_CHILD=
	trap 'ew_forward TERM' TERM
	trap 'ew_forward INT' INT
	supervisord -c "$APP_DIR/supervisord.conf" "$@" &
	EW_CHILD=$!
	# a signal that came before $! was known
	if [ -n "$EW_SIGNAL" ]; then
		kill -s "$EW_SIGNAL" "$EW_CHILD" 2>/dev/null || true
	fi
	while :; do
		EW_TRAPPED=
		status=0
		wait "$EW_CHILD" || status=$?
		# A trap interrupts `wait` (status 128+n) while supervisord still runs: wait again.
		# Once supervisord has ended, `wait` returns its status, even a second time.
		[ -n "$EW_TRAPPED" ] || break
	done
	trap - TERM INT
	if [ "$status" -eq 0 ] && [ -e "$marker" ]; then
		ew_log INFO "supervisord ended after the stop key; exit 0 (the container stays stopped)"
		exit 0
	fi
	if [ "$status" -eq 0 ]; then
		# TERM, or supervisord shut down some other way (supervisorctl shutdown): restartable
		status=143
		[ "$EW_SIGNAL" != INT ] || status=130
	fi
	ew_log INFO "supervisord ended${EW_SIGNAL:+ on SIG$EW_SIGNAL} without a stop key; exit $status"
	exit "$status"
}

_is_sourced() {
	# https://unix.stackexchange.com/a/215279
	[ "${#FUNCNAME[@]}" -ge 2 ] &&
		[ "${FUNCNAME[0]}" = '_is_sourced' ] &&
		[ "${FUNCNAME[1]}" = 'source' ]
}

_main() {
	# No arguments, or supervisord options: start the service.
	if [ "$#" -eq 0 ] || [ "${1:0:1}" = '-' ]; then
		set -- supervisord "$@"
	fi
	if [ "$1" = 'supervisord' ] && [ -n "${EW_SUPERVISE:-}" ]; then
		shift
		unset EW_SUPERVISE
		ew_log INFO "starting supervisord"
		ew_run_supervisord "$@"
	fi
	if [ "$1" = 'supervisord' ]; then
		shift
		ew_setup_env
		ew_check_required
		ew_render_ini
		ew_wait_for_servers
		ew_apply_schema
		mkdir -p "$ENERGY_WORKER_RUN_DIR"
		ew_optional_programs
		# The processes read PostgreSQL's login from $POSTGRES_INI, and only the set-up needs
		# Grafana's password: the others each get theirs from a file (supervisord.conf).
		ew_program_secrets
		ew_reexec_without_secrets supervisord "$@"
	fi
	exec "$@"
}

if ! _is_sourced; then
	_main "$@"
fi
