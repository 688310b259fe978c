#!/bin/bash
# Stops the depman agent and the restart loop the depman on-start script started.
# Run it on the instance: bash "$WORKSPACE/depman/stop.sh" (the on-start script
# writes this file there), or `depman onstart --stop | bash`.
set -u
here="$(cd "$(dirname "$0")" 2>/dev/null && pwd)"
if [ -n "$here" ] && [ -f "$here/loop.pid" ]; then
    DM_DIR="$here"
else
    DM_DIR="${WORKSPACE:-/workspace}/depman"
fi

# "<boot id> <start time>" of a live process: a pid alone may be reused (after a reboot
# most of all), and this script must never stop somebody else's process.
process_identity() {  # PID
    local stat boot
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" && boot="$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)" || return 1
    set -- ${stat##*) }
    [ "$1" != Z ] && [ -n "${20:-}" ] || return 1
    echo "$boot ${20}"
}

stop_pid() {  # PIDFILE WHAT   (the file: "<pid>" or "<pid> <boot id> <start time>")
    local pid recorded
    read -r pid recorded < "$1" 2>/dev/null
    rm -f "$1"
    if [ -n "${recorded:-}" ] && [ -r /proc/self/stat ] \
        && [ "$(process_identity "$pid")" != "$recorded" ]; then
        pid=""  # that pid is another process now
    fi
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "depman-stop: no $2 running"
        return 0
    fi
    kill "$pid"
    for _ in $(seq 1 300); do  # the agent finishes its state write first (at most 30 s)
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid" 2>/dev/null
    fi
    echo "depman-stop: stopped the $2 (pid $pid)"
}

# The loop first, so that it starts no new agent once the agent exits.
stop_pid "$DM_DIR/loop.pid" "restart loop"
stop_pid "$DM_DIR/agent.pid" "agent"
