#!/bin/sh
# Starts Alertmanager with the webhook URLs taken from the environment.
#
# Alertmanager does not expand environment variables in its configuration, so
# this renders the shipped alertmanager.yml (which holds loopback placeholder
# URLs and passes `amtool check-config` as it is) into a private copy, swapping
# each placeholder for its variable when the variable is set, then execs
# Alertmanager on that copy with the arguments given to this script.
#
#   ALERTMANAGER_CRITICAL_WEBHOOK_URL  receiver "critical" (severity=critical)
#   ALERTMANAGER_WARNING_WEBHOOK_URL   receiver "warning" (everything else)
#
# Runs under busybox sh in the prom/alertmanager image; also under dash/bash.
set -eu

template=${ALERTMANAGER_CONFIG_TEMPLATE:-/etc/alertmanager/alertmanager.yml}
rendered=${ALERTMANAGER_RENDERED_CONFIG:-/tmp/alertmanager.yml}
binary=${ALERTMANAGER_BIN:-/bin/alertmanager}

critical_placeholder='http://127.0.0.1:9/pipelens-critical-webhook'
warning_placeholder='http://127.0.0.1:9/pipelens-warning-webhook'

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

critical=${ALERTMANAGER_CRITICAL_WEBHOOK_URL:-$critical_placeholder}
warning=${ALERTMANAGER_WARNING_WEBHOOK_URL:-$warning_placeholder}
check_url ALERTMANAGER_CRITICAL_WEBHOOK_URL "$critical"
check_url ALERTMANAGER_WARNING_WEBHOOK_URL "$warning"

umask 077
sed \
	-e "s|$critical_placeholder|$(sed_escape "$critical")|g" \
	-e "s|$warning_placeholder|$(sed_escape "$warning")|g" \
	"$template" >"$rendered"

if [ "$critical" = "$critical_placeholder" ] || [ "$warning" = "$warning_placeholder" ]; then
	echo "entrypoint: a webhook URL is not set; its notifications go to the loopback discard port (see .env.example)" >&2
fi

exec "$binary" --config.file="$rendered" "$@"
