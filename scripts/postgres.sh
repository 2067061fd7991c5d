#!/usr/bin/env bash
# scripts/postgres.sh — provide a PostgreSQL server for pg_cached's tests, demos and benches.
#
# As a library (scripts/test, scripts/demo, scripts/with-postgres):
#
#     source scripts/postgres.sh
#     pg_cached_install_traps   # stop a private cluster we started when the script exits
#     pg_cached_provision       # exports DATABASE_URL (and PG_BIN_DIR when server binaries exist)
#
# As a command:
#
#     scripts/postgres.sh [env]   print `export DATABASE_URL=...` lines (eval "$(scripts/postgres.sh)");
#                                 a private cluster started this way is left running
#     scripts/postgres.sh url     print only the URL
#     scripts/postgres.sh stop    stop the private cluster under target/pg-cluster
#     scripts/postgres.sh status  report on the private cluster
#
# Where the server comes from, first match wins:
#   a. $DATABASE_URL, if it is reachable;
#   b. a local server: 127.0.0.1:5432 as user postgres, then the unix sockets in
#      /var/run/postgresql (as the current user, then as postgres); as root, a stopped
#      Debian system cluster ("main") is started with pg_ctlcluster and tried again;
#   c. a private throwaway cluster in target/pg-cluster, created with initdb from the installed
#      binaries and started on a free port at 127.0.0.1 (54329 and up);
#   d. if there are no server binaries: as root with apt-get, `apt-get install -y postgresql`,
#      then (b)/(c); otherwise print what to install and exit 1.
# For a local or private server, DATABASE_URL names the database `pg_cached`, created if missing.
#
# Environment:
#   DATABASE_URL             preferred server (step a)
#   PG_CACHED_SKIP_LOCAL=1   skip steps (a) and (b), e.g. to exercise the private cluster
#   PG_BIN_DIR               directory holding initdb/pg_ctl/postgres (exported when found)
#   PG_CACHED_CLUSTER_DIR    private cluster location (default: <repo>/target/pg-cluster)
#   PG_CACHED_PORT           first port probed for the private cluster (default: 54329)
#   PG_CACHED_CLUSTER_USER   when root: user that owns/runs the private cluster
#                            (default: owner of an existing cluster, else postgres, else pg_cached)
#   PG_CACHED_VERBOSE=1      explain every candidate that was rejected
#
# A private cluster started by a script is stopped when the last script using it exits
# (users are tracked in target/pg-cluster/users, guarded by flock where available).

set -euo pipefail

PGC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGC_DB_NAME="pg_cached"
PGC_SUPERUSER="postgres"
PGC_CLUSTER_DIR="${PG_CACHED_CLUSTER_DIR:-$PGC_ROOT/target/pg-cluster}"
PGC_FIRST_PORT="${PG_CACHED_PORT:-54329}"
PGC_CONNECT_TIMEOUT="${PG_CACHED_CONNECT_TIMEOUT:-3}"
PGC_PSQL=""          # psql binary
PGC_RUN_AS=""        # when root: unprivileged user that runs initdb/pg_ctl for the private cluster
PGC_LOCK_FD=""       # fd holding the cluster lock
PGC_REGISTERED=0     # 1 once this process is recorded as a user of the private cluster
PGC_MODE="session"   # "session": stop what we start at exit; "pinned": leave it running

pgc_log() { printf 'postgres: %s\n' "$*" >&2; }
pgc_debug() {
	if [[ "${PG_CACHED_VERBOSE:-0}" == 1 ]]; then pgc_log "$@"; fi
	return 0
}
pgc_die() {
	pgc_log "error: $*"
	exit 1
}
pgc_is_root() { [[ "$(id -u)" -eq 0 ]]; }
pgc_have() { command -v "$1" >/dev/null 2>&1; }
pgc_first_line() { printf '%s\n' "${1%%$'\n'*}"; }

# Hide the password of a URL in messages.
pgc_redact() { printf '%s\n' "$1" | sed -E 's#^([a-z]+://[^:/@]*):[^@/]*@#\1:***@#'; }

# Percent-encode a URL component (user names, socket directories).
pgc_urlencode() {
	local s=$1 out="" c i
	for ((i = 0; i < ${#s}; i++)); do
		c=${s:i:1}
		case $c in
		[a-zA-Z0-9._~-]) out+=$c ;;
		*) out+=$(printf '%%%02X' "'$c") ;;
		esac
	done
	printf '%s\n' "$out"
}

# ---------------------------------------------------------------------------------------------
# Binaries
# ---------------------------------------------------------------------------------------------

pgc_has_server_bins() { [[ -n "$1" && -x "$1/initdb" && -x "$1/pg_ctl" && -x "$1/postgres" ]]; }

# Print the directory holding initdb/pg_ctl/postgres, or fail.
pgc_find_bin_dir() {
	local d
	if [[ -n "${PG_BIN_DIR:-}" ]]; then
		if pgc_has_server_bins "$PG_BIN_DIR"; then
			printf '%s\n' "$PG_BIN_DIR"
			return 0
		fi
		pgc_log "warning: PG_BIN_DIR=$PG_BIN_DIR lacks initdb/pg_ctl/postgres; searching elsewhere"
	fi
	if pgc_have pg_config; then
		d=$(pg_config --bindir 2>/dev/null || true)
		if pgc_has_server_bins "$d"; then
			printf '%s\n' "$d"
			return 0
		fi
	fi
	# Versioned install locations (Debian/Ubuntu, PGDG RPMs, Homebrew), newest version first.
	d=$(
		for d in /usr/lib/postgresql/*/bin /usr/pgsql-*/bin \
			/opt/homebrew/opt/postgresql@*/bin /usr/local/opt/postgresql@*/bin; do
			[[ -d "$d" ]] || continue
			printf '%s %s\n' "$(printf '%s\n' "$d" | sed -E 's#^.*(postgresql/|pgsql-|postgresql@)([0-9.]+).*$#\2#')" "$d"
		done | sort -r -V -k1,1 | while read -r _ dir; do
			if pgc_has_server_bins "$dir"; then
				printf '%s\n' "$dir"
				break
			fi
		done
	)
	if [[ -n "$d" ]]; then
		printf '%s\n' "$d"
		return 0
	fi
	if pgc_have initdb; then
		d=$(dirname "$(command -v initdb)")
		if pgc_has_server_bins "$d"; then
			printf '%s\n' "$d"
			return 0
		fi
	fi
	return 1
}

pgc_find_tools() {
	local bin
	if bin=$(pgc_find_bin_dir); then
		PG_BIN_DIR=$bin
		export PG_BIN_DIR
	else
		unset PG_BIN_DIR
	fi
	if pgc_have psql; then
		PGC_PSQL=$(command -v psql)
	elif [[ -n "${PG_BIN_DIR:-}" && -x "$PG_BIN_DIR/psql" ]]; then
		PGC_PSQL=$PG_BIN_DIR/psql
	else
		PGC_PSQL=""
	fi
}

pgc_install_hint() {
	pgc_log "error: no PostgreSQL server binaries (initdb, pg_ctl, postgres) found. Install them, e.g.:"
	cat >&2 <<-'EOF'
		    Debian/Ubuntu:  sudo apt-get install -y postgresql
		    Fedora/RHEL:    sudo dnf install -y postgresql-server postgresql
		    macOS:          brew install postgresql@16
		  or set PG_BIN_DIR to a directory containing initdb, pg_ctl and postgres,
		  or set DATABASE_URL to a reachable server (postgres://user@host:port/db).
	EOF
}

# Step (d): install PostgreSQL with apt when we can.
pgc_install_postgres() {
	if ! pgc_is_root || ! pgc_have apt-get; then
		return 1
	fi
	pgc_log "no PostgreSQL binaries found; installing with: apt-get update && apt-get install -y postgresql"
	if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; } >&2; then
		pgc_log "apt-get install postgresql failed"
		return 1
	fi
	pgc_find_tools
	[[ -n "${PG_BIN_DIR:-}" && -n "$PGC_PSQL" ]]
}

# ---------------------------------------------------------------------------------------------
# Talking to servers
# ---------------------------------------------------------------------------------------------

# pgc_psql URL ARGS... — never prompts for a password, short connect timeout, no psqlrc.
pgc_psql() {
	local url=$1
	shift
	PGCONNECT_TIMEOUT="$PGC_CONNECT_TIMEOUT" "$PGC_PSQL" -X -w -q -At -v ON_ERROR_STOP=1 -d "$url" "$@" </dev/null
}

# Make sure database pg_cached exists on the server at BASE (URL without database).
pgc_ensure_db() {
	local base=$1 maint="$1/postgres" exists
	exists=$(pgc_psql "$maint" -c "select 1 from pg_database where datname = '$PGC_DB_NAME'" 2>/dev/null) || return 1
	[[ "$exists" == 1 ]] && return 0
	if ! pgc_psql "$maint" -c "create database \"$PGC_DB_NAME\"" >/dev/null 2>&1; then
		# Maybe a concurrent invocation created it first.
		exists=$(pgc_psql "$maint" -c "select 1 from pg_database where datname = '$PGC_DB_NAME'" 2>/dev/null) || return 1
		if [[ "$exists" != 1 ]]; then
			pgc_log "could not create database $PGC_DB_NAME on $(pgc_redact "$base")"
			return 1
		fi
	fi
	pgc_debug "created database $PGC_DB_NAME on $(pgc_redact "$base")"
}

# pgc_try_server BASE — usable if we can connect to its `postgres` db, may create databases,
# and pg_cached exists (or can be created). Sets DATABASE_URL on success.
pgc_try_server() {
	local base=$1 out
	if ! out=$(pgc_psql "$base/postgres" -c \
		"select rolsuper or rolcreatedb from pg_roles where rolname = current_user" 2>&1); then
		pgc_debug "$(pgc_redact "$base"): cannot connect: $(pgc_first_line "$out")"
		return 1
	fi
	if [[ "${out##*$'\n'}" != t ]]; then
		pgc_debug "$(pgc_redact "$base"): role may not create databases"
		return 1
	fi
	pgc_ensure_db "$base" || return 1
	DATABASE_URL="$base/$PGC_DB_NAME"
}

# Step (a).
pgc_try_env_url() {
	local out
	[[ -n "${DATABASE_URL:-}" ]] || return 1
	if [[ -z "$PGC_PSQL" ]]; then
		pgc_log "psql not found; using DATABASE_URL ($(pgc_redact "$DATABASE_URL")) without checking it"
		PG_CACHED_SOURCE="env"
		return 0
	fi
	if out=$(pgc_psql "$DATABASE_URL" -c 'select 1' 2>&1); then
		pgc_log "using DATABASE_URL from the environment ($(pgc_redact "$DATABASE_URL"))"
		PG_CACHED_SOURCE="env"
		return 0
	fi
	pgc_log "DATABASE_URL ($(pgc_redact "$DATABASE_URL")) is not usable: $(pgc_first_line "$out"); trying a local server"
	return 1
}

# Candidate local servers, one per line: "BASE_URL<TAB>description", in order of preference.
pgc_local_candidates() {
	local sockdir=/var/run/postgresql s port user me
	printf '%s\t%s\n' "postgres://$PGC_SUPERUSER@127.0.0.1:5432" "127.0.0.1:5432 (user $PGC_SUPERUSER)"
	me=$(id -un)
	for s in "$sockdir"/.s.PGSQL.*; do
		[[ -S "$s" ]] || continue
		port=${s##*.}
		for user in "$me" "$PGC_SUPERUSER"; do
			if [[ "$user" == "$PGC_SUPERUSER" && "$me" == "$PGC_SUPERUSER" ]]; then continue; fi
			printf 'postgres://%s@%s:%s\t%s\n' "$(pgc_urlencode "$user")" "$(pgc_urlencode "$sockdir")" \
				"$port" "unix socket $sockdir port $port (user $user)"
		done
	done
}

pgc_try_local_once() {
	local base desc
	while IFS=$'\t' read -r base desc; do
		if pgc_try_server "$base"; then
			pgc_log "using local server at $desc"
			PG_CACHED_SOURCE=local
			return 0
		fi
	done < <(pgc_local_candidates)
	return 1
}

# As root, start a stopped Debian system cluster named "main" (pg_ctlcluster).
pgc_start_system_cluster() {
	local ver name _port status started=1
	pgc_is_root && pgc_have pg_lsclusters && pgc_have pg_ctlcluster || return 1
	while read -r ver name _port status _; do
		[[ "$name" == main && "$status" == down* ]] || continue
		pgc_log "system cluster $ver/main is down; starting it with pg_ctlcluster (it is left running)"
		if pg_ctlcluster --skip-systemctl-redirect "$ver" main start >&2; then
			started=0
		else
			pgc_log "pg_ctlcluster $ver main start failed"
		fi
	done < <(pg_lsclusters --no-header 2>/dev/null || true)
	return "$started"
}

# Step (b).
pgc_try_local() {
	[[ -n "$PGC_PSQL" ]] || return 1
	pgc_try_local_once && return 0
	if pgc_start_system_cluster; then
		pgc_try_local_once && return 0
	fi
	pgc_log "no usable local server (tried 127.0.0.1:5432 as $PGC_SUPERUSER and sockets in /var/run/postgresql; PG_CACHED_VERBOSE=1 says why)"
	return 1
}

# ---------------------------------------------------------------------------------------------
# Private cluster (step c)
# ---------------------------------------------------------------------------------------------

pgc_data_dir() { printf '%s\n' "$PGC_CLUSTER_DIR/data"; }
pgc_sock_dir() { printf '%s\n' "$PGC_CLUSTER_DIR/sock"; }
pgc_log_file() { printf '%s\n' "$PGC_CLUSTER_DIR/log"; }

# Run a command as the cluster owner (initdb/postgres refuse to run as root), from the
# cluster directory, without the lock fd (the postmaster must not inherit the lock).
pgc_as_owner() {
	(
		if [[ -n "$PGC_LOCK_FD" ]]; then exec {PGC_LOCK_FD}>&-; fi
		cd "$PGC_CLUSTER_DIR"
		if [[ -z "$PGC_RUN_AS" ]]; then
			exec "$@"
		elif pgc_have runuser; then
			exec runuser -u "$PGC_RUN_AS" -- "$@"
		elif pgc_have setpriv; then
			exec setpriv --reuid="$PGC_RUN_AS" --regid="$(id -g "$PGC_RUN_AS")" --init-groups -- "$@"
		else
			pgc_die "need runuser or setpriv (util-linux) to run PostgreSQL as $PGC_RUN_AS"
		fi
	)
}

pgc_file_owner() { stat -c %U "$1" 2>/dev/null || stat -f %Su "$1" 2>/dev/null; }

pgc_choose_owner() {
	local owner data
	PGC_RUN_AS=""
	pgc_is_root || return 0
	data=$(pgc_data_dir)
	if [[ -n "${PG_CACHED_CLUSTER_USER:-}" ]]; then
		PGC_RUN_AS=$PG_CACHED_CLUSTER_USER
	elif [[ -d "$data" ]] && owner=$(pgc_file_owner "$data") && [[ -n "$owner" && "$owner" != root && "$owner" != UNKNOWN ]]; then
		PGC_RUN_AS=$owner
	elif id postgres >/dev/null 2>&1; then
		PGC_RUN_AS=postgres
	else
		PGC_RUN_AS=pg_cached
	fi
	if ! id "$PGC_RUN_AS" >/dev/null 2>&1; then
		pgc_log "creating system user $PGC_RUN_AS to run the private cluster (initdb/postgres refuse to run as root)"
		useradd --system --user-group --no-create-home --home-dir /nonexistent \
			--shell /usr/sbin/nologin "$PGC_RUN_AS" >&2 || pgc_die "useradd $PGC_RUN_AS failed"
	fi
}

# Create the cluster directory, owned by the cluster owner, and check the owner can use it.
pgc_prepare_dir() {
	mkdir -p "$PGC_CLUSTER_DIR" "$PGC_CLUSTER_DIR/users"
	if [[ -n "$PGC_RUN_AS" ]]; then
		chown "$PGC_RUN_AS:" "$PGC_CLUSTER_DIR"
	fi
	pgc_as_owner test -w "$PGC_CLUSTER_DIR" -a -x "$PGC_CLUSTER_DIR" 2>/dev/null
}

pgc_lock() {
	pgc_have flock || return 0
	[[ -d "$PGC_CLUSTER_DIR" ]] || return 1
	exec {PGC_LOCK_FD}>>"$PGC_CLUSTER_DIR/lock"
	flock "$PGC_LOCK_FD"
}

pgc_unlock() {
	if [[ -n "$PGC_LOCK_FD" ]]; then
		exec {PGC_LOCK_FD}>&-
		PGC_LOCK_FD=""
	fi
}

pgc_server_major() { "$PG_BIN_DIR/postgres" --version | sed -nE 's/^[^0-9]*([0-9]+).*$/\1/p'; }

pgc_init_cluster() {
	local data major have out
	data=$(pgc_data_dir)
	major=$(pgc_server_major)
	if [[ -f "$data/PG_VERSION" ]]; then
		have=$(<"$data/PG_VERSION")
		if [[ "$have" == "$major" ]]; then
			pgc_debug "reusing private cluster in $data"
			return 0
		fi
		pgc_log "private cluster in $data is version $have but the binaries are $major; recreating it"
		rm -rf "$data"
	elif [[ -e "$data" ]]; then
		pgc_log "$data is not a PostgreSQL cluster (interrupted initdb?); recreating it"
		rm -rf "$data"
	fi
	pgc_log "initialising private cluster in $data"
	if ! out=$(pgc_as_owner "$PG_BIN_DIR/initdb" -D "$data" -U "$PGC_SUPERUSER" --auth=trust \
		--encoding=UTF8 --locale=C --no-sync 2>&1); then
		printf '%s\n' "$out" | tail -n 20 >&2
		rm -rf "$data"
		pgc_die "initdb failed"
	fi
	# fsync/full_page_writes off for speed; synchronous_commit stays at its default
	# because the library measures that itself. Port and socket dir are per start.
	cat >>"$data/postgresql.conf" <<-'EOF'

		# ---- pg_cached test cluster (scripts/postgres.sh) ----
		listen_addresses = '127.0.0.1'
		fsync = off
		full_page_writes = off
		max_connections = 200
		shared_buffers = 128MB
		include_if_exists = 'pg_cached_runtime.conf'
	EOF
}

# Print the port of the running private cluster, or fail if it is not running.
pgc_cluster_port() {
	local data
	data=$(pgc_data_dir)
	[[ -f "$data/postmaster.pid" ]] || return 1
	pgc_as_owner "$PG_BIN_DIR/pg_ctl" status -D "$data" >/dev/null 2>&1 || return 1
	sed -n 4p "$data/postmaster.pid"
}

pgc_port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pgc_free_port() {
	local port=$1 last=$(($1 + 200))
	while ((port < last)); do
		if ! pgc_port_in_use "$port"; then
			printf '%s\n' "$port"
			return 0
		fi
		port=$((port + 1))
	done
	return 1
}

pgc_start_cluster() {
	local data sock log port next=$PGC_FIRST_PORT attempt sockets
	data=$(pgc_data_dir)
	sock=$(pgc_sock_dir)
	log=$(pgc_log_file)
	mkdir -p "$sock"
	if [[ -n "$PGC_RUN_AS" ]]; then chown "$PGC_RUN_AS:" "$sock"; fi
	for attempt in 1 2 3; do
		port=$(pgc_free_port "$next") || pgc_die "no free TCP port in $next..$((next + 199))"
		# Unix socket paths are limited to ~107 bytes; fall back to TCP only.
		if ((${#sock} + 16 < 107)); then sockets=$sock; else sockets=""; fi
		printf "port = %s\nunix_socket_directories = '%s'\n" "$port" "${sockets//\'/\'\'}" \
			>"$data/pg_cached_runtime.conf"
		if [[ -n "$PGC_RUN_AS" ]]; then chown "$PGC_RUN_AS:" "$data/pg_cached_runtime.conf"; fi
		if pgc_as_owner "$PG_BIN_DIR/pg_ctl" -D "$data" -l "$log" -w -t 120 start >/dev/null 2>&1; then
			printf '%s\n' "$port"
			return 0
		fi
		pgc_log "starting the private cluster on port $port failed (attempt $attempt)"
		next=$((port + 1))
	done
	tail -n 20 "$log" >&2 || true
	pgc_die "could not start the private cluster (log: $log)"
}

pgc_register() {
	: >"$PGC_CLUSTER_DIR/users/$$"
	PGC_REGISTERED=1
}

pgc_pid_alive() { kill -0 "$1" 2>/dev/null || ps -p "$1" >/dev/null 2>&1; }

# Number of other live processes using the private cluster (forgets dead ones).
pgc_other_users() {
	local f pid n=0
	for f in "$PGC_CLUSTER_DIR"/users/*; do
		[[ -e "$f" ]] || continue
		pid=${f##*/}
		if [[ "$pid" == "$$" ]]; then continue; fi
		if pgc_pid_alive "$pid"; then n=$((n + 1)); else rm -f "$f"; fi
	done
	printf '%s\n' "$n"
}

pgc_stop_cluster() {
	pgc_as_owner "$PG_BIN_DIR/pg_ctl" -D "$(pgc_data_dir)" -m fast -w -t 60 stop >/dev/null 2>&1
}

pgc_private_cluster() {
	local port base where started=0
	[[ -n "$PGC_PSQL" ]] || pgc_die "psql not found (looked on PATH and in $PG_BIN_DIR)"
	pgc_choose_owner
	if ! pgc_prepare_dir; then
		local fallback
		fallback="/tmp/pg-cached-$(printf '%s' "$PGC_ROOT" | cksum | cut -d' ' -f1)"
		pgc_log "$PGC_RUN_AS cannot use $PGC_CLUSTER_DIR (a parent directory is not accessible); using $fallback"
		PGC_CLUSTER_DIR=$fallback
		pgc_choose_owner
		pgc_prepare_dir || pgc_die "$PGC_RUN_AS cannot use $PGC_CLUSTER_DIR either; set PG_CACHED_CLUSTER_DIR"
	fi
	pgc_lock
	pgc_init_cluster
	if port=$(pgc_cluster_port); then
		pgc_debug "private cluster already running on port $port"
	else
		port=$(pgc_start_cluster) || exit 1
		started=1
	fi
	if [[ "$PGC_MODE" == pinned ]]; then
		rm -f "$PGC_CLUSTER_DIR/autostop"
	else
		if ((started)); then : >"$PGC_CLUSTER_DIR/autostop"; fi
		pgc_register
	fi
	pgc_unlock
	base="postgres://$PGC_SUPERUSER@127.0.0.1:$port"
	pgc_try_server "$base" || pgc_die "private cluster on 127.0.0.1:$port is not usable (log: $(pgc_log_file))"
	PG_CACHED_SOURCE=private
	PG_CACHED_STARTED_CLUSTER=$started
	where=${PGC_CLUSTER_DIR#"$PGC_ROOT"/}
	if ((started)); then
		pgc_log "using private cluster at 127.0.0.1:$port ($where, started now$([[ "$PGC_MODE" == pinned ]] && printf '; stop it with scripts/postgres.sh stop'))"
	else
		pgc_log "using private cluster at 127.0.0.1:$port ($where, already running)"
	fi
}

# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

# pg_cached_provision [session|pinned]
# Exports DATABASE_URL, PG_CACHED_SOURCE (env|local|private), PG_CACHED_STARTED_CLUSTER (1 if
# this invocation started the private cluster) and PG_BIN_DIR (when server binaries exist).
pg_cached_provision() {
	PGC_MODE=${1:-session}
	PG_CACHED_SOURCE=""
	PG_CACHED_STARTED_CLUSTER=0
	pgc_find_tools

	if [[ "${PG_CACHED_SKIP_LOCAL:-0}" == 1 ]]; then
		pgc_log "PG_CACHED_SKIP_LOCAL=1: not using DATABASE_URL or local servers"
	elif pgc_try_env_url || pgc_try_local; then
		:
	fi

	if [[ -z "$PG_CACHED_SOURCE" && -z "${PG_BIN_DIR:-}" ]]; then
		if ! pgc_install_postgres; then
			pgc_install_hint
			exit 1
		fi
		if [[ "${PG_CACHED_SKIP_LOCAL:-0}" != 1 ]] && pgc_try_local; then :; fi
	fi

	if [[ -z "$PG_CACHED_SOURCE" ]]; then
		pgc_private_cluster
	fi
	export DATABASE_URL PG_CACHED_SOURCE PG_CACHED_STARTED_CLUSTER
	if [[ -n "${PG_BIN_DIR:-}" ]]; then export PG_BIN_DIR; fi
}

# Unregister from the private cluster; stop it if a script started it and nobody else uses it.
# Idempotent; safe to call from traps.
pg_cached_cleanup() {
	local others
	((PGC_REGISTERED)) || return 0
	PGC_REGISTERED=0
	pgc_lock || true
	rm -f "$PGC_CLUSTER_DIR/users/$$"
	others=$(pgc_other_users || printf '0\n')
	if [[ -e "$PGC_CLUSTER_DIR/autostop" ]]; then
		if ((others == 0)); then
			pgc_log "stopping private cluster ($PGC_CLUSTER_DIR)"
			if pgc_stop_cluster; then
				rm -f "$PGC_CLUSTER_DIR/autostop"
			else
				pgc_log "warning: pg_ctl stop failed (log: $(pgc_log_file))"
			fi
		else
			pgc_log "leaving private cluster running for $others other user(s)"
		fi
	fi
	pgc_unlock || true
	return 0
}

pgc_on_signal() {
	pg_cached_cleanup
	trap - "$1" EXIT
	kill -s "$1" "$$"
}

# Run pg_cached_cleanup when the calling script exits or is interrupted.
pg_cached_install_traps() {
	trap 'pg_cached_cleanup' EXIT
	trap 'pgc_on_signal INT' INT
	trap 'pgc_on_signal TERM' TERM
	trap 'pgc_on_signal HUP' HUP
}

# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

pgc_usage() {
	sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed -E 's/^# ?//'
}

pgc_cli_stop() {
	local data others
	data=$(pgc_data_dir)
	if [[ ! -f "$data/PG_VERSION" ]]; then
		pgc_log "no private cluster in $PGC_CLUSTER_DIR"
		return 0
	fi
	PG_BIN_DIR=$(pgc_find_bin_dir) || pgc_die "no PostgreSQL binaries found (set PG_BIN_DIR)"
	pgc_choose_owner
	pgc_lock
	if pgc_cluster_port >/dev/null; then
		others=$(pgc_other_users)
		if ((others > 0)); then pgc_log "warning: $others running script(s) still use it"; fi
		pgc_stop_cluster || pgc_die "pg_ctl stop failed (log: $(pgc_log_file))"
		pgc_log "stopped private cluster ($PGC_CLUSTER_DIR)"
	else
		pgc_log "private cluster ($PGC_CLUSTER_DIR) is not running"
	fi
	rm -f "$PGC_CLUSTER_DIR/autostop"
	pgc_unlock
}

pgc_cli_status() {
	local port
	if [[ ! -f "$(pgc_data_dir)/PG_VERSION" ]]; then
		printf 'no private cluster in %s\n' "$PGC_CLUSTER_DIR"
		return 0
	fi
	PG_BIN_DIR=$(pgc_find_bin_dir) || pgc_die "no PostgreSQL binaries found (set PG_BIN_DIR)"
	pgc_choose_owner
	if port=$(pgc_cluster_port); then
		printf 'private cluster %s: running on 127.0.0.1:%s (%s)\n' "$PGC_CLUSTER_DIR" "$port" \
			"$([[ -e "$PGC_CLUSTER_DIR/autostop" ]] && printf 'stops when its scripts exit' || printf 'left running')"
	else
		printf 'private cluster %s: stopped\n' "$PGC_CLUSTER_DIR"
	fi
}

pgc_main() {
	local cmd=${1:-env}
	case "$cmd" in
	env | start)
		pg_cached_provision pinned
		printf 'export DATABASE_URL=%q\n' "$DATABASE_URL"
		if [[ -n "${PG_BIN_DIR:-}" ]]; then printf 'export PG_BIN_DIR=%q\n' "$PG_BIN_DIR"; fi
		;;
	url)
		pg_cached_provision pinned
		printf '%s\n' "$DATABASE_URL"
		;;
	stop) pgc_cli_stop ;;
	status) pgc_cli_status ;;
	-h | --help | help) pgc_usage ;;
	*)
		pgc_usage >&2
		exit 2
		;;
	esac
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
	pgc_main "$@"
fi
