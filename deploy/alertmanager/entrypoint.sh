#!/bin/sh
# Starts Alertmanager with the webhook URLs taken from the environment.
#
# Alertmanager does not expand environment variables in its configuration, so
# this renders the shipped alertmanager.yml (which passes `amtool
# check-config` as it is, every receiver a null receiver) into a private copy,
# replacing each receiver's marker comment
#
#     # webhook: VARIABLE [send_resolved]
#
# with a webhook_configs entry for the URL in VARIABLE when it is set, then
# execs Alertmanager on that copy with the arguments given to this script.
#
#   ALERTMANAGER_CRITICAL_WEBHOOK_URL  receiver "critical" (severity=critical)
#   ALERTMANAGER_WARNING_WEBHOOK_URL   receiver "warning" (everything else)
#   ALERTMANAGER_WATCHDOG_WEBHOOK_URL  receiver "watchdog" (the Watchdog
#                                      heartbeat, for a dead man's switch)
#
# Runs under busybox sh in the prom/alertmanager image; also under dash/bash.
set -eu

template=${ALERTMANAGER_CONFIG_TEMPLATE:-/etc/alertmanager/alertmanager.yml}
rendered=${ALERTMANAGER_RENDERED_CONFIG:-/tmp/alertmanager.yml}
binary=${ALERTMANAGER_BIN:-/bin/alertmanager}

# Escape a value for the replacement side of `sed s|...|...|`.
sed_escape() {
	printf '%s' "$1" | sed -e 's/[\\&|]/\\&/g'
}

# Quotes or newlines would break out of the YAML string; refuse them.
check_url() {
	case "$2" in
	*\"* | *"'"* | *'
'*)
		echo "entrypoint: $1 must not contain quotes or newlines" >&2
		exit 64
		;;
	esac
}

# render VARIABLE VALUE: put VALUE in the receiver marked with VARIABLE.
render() {
	if [ -z "$2" ]; then
		echo "entrypoint: $1 is not set: its receiver only shows alerts in the UI (see .env.example)" >&2
		return 0
	fi
	check_url "$1" "$2"
	marker="^\\( *\\)# webhook: $1"
	if ! grep -q "^ *# webhook: $1\\( send_resolved\\)\\{0,1\\}\$" "$rendered"; then
		echo "entrypoint: $template has no '# webhook: $1' marker" >&2
		exit 65
	fi
	url=$(sed_escape "$2")
	sed \
		-e "s|$marker send_resolved\$|\\1webhook_configs: [{url: '$url', send_resolved: true}]|" \
		-e "s|$marker\$|\\1webhook_configs: [{url: '$url', send_resolved: false}]|" \
		"$rendered" >"$rendered.tmp"
	mv "$rendered.tmp" "$rendered"
}

umask 077
cp "$template" "$rendered"
render ALERTMANAGER_CRITICAL_WEBHOOK_URL "${ALERTMANAGER_CRITICAL_WEBHOOK_URL:-}"
render ALERTMANAGER_WARNING_WEBHOOK_URL "${ALERTMANAGER_WARNING_WEBHOOK_URL:-}"
render ALERTMANAGER_WATCHDOG_WEBHOOK_URL "${ALERTMANAGER_WATCHDOG_WEBHOOK_URL:-}"

exec "$binary" --config.file="$rendered" "$@"
