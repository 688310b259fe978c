#!/bin/bash
# depman on-start script for server type __TYPE_COMMENT__ (printed by `depman onstart`).
# Paste it as the Vast.ai template's on-start script. It holds no secret: set
# DEPENDENCY_MANAGER_SHARED_SECRET (and HF_TOKEN / CIVITAI_TOKEN if needed) in the
# template's environment. The agent takes its identity from DM_INSTANCE_ID, else
# from Vast's CONTAINER_ID / VAST_CONTAINERLABEL / PUBLIC_IPADDR.
set -u

DEPMAN_URL="${DEPMAN_URL:-__URL__}"
DEPMAN_URL="${DEPMAN_URL%/}"
export SERVER_TYPE="${SERVER_TYPE:-__TYPE__}"
export WORKSPACE="${WORKSPACE:-/workspace}"
export FCS_API_BASE_URL="${FCS_API_BASE_URL:-$DEPMAN_URL/api}"
PYTHON="${DM_PYTHON:-python3}"
DM_DIR="$WORKSPACE/depman"
AGENT="$DM_DIR/depman-agent.pyz"
LOG="$WORKSPACE/depman-agent.log"
mkdir -p "$DM_DIR"

note() { printf '%s depman-onstart: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >> "$LOG"; }
# What the script itself does also goes to its stdout: Vast.ai's on-start log.
say() { echo "depman-onstart: $*"; note "$*"; }

if [ -z "$DEPMAN_URL" ]; then
    say "DEPMAN_URL is not set: set it in the template's environment (the depman server's URL)"
    exit 1
fi
# "<boot id> <start time>" of a live process: with its pid, it names one process for
# good (a pid alone is reused, after a reboot most of all).
process_identity() {  # PID
    local stat boot
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" && boot="$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)" || return 1
    set -- ${stat##*) }  # the fields after the command name: state first, start time 20th
    [ "$1" != Z ] && [ -n "${20:-}" ] || return 1
    echo "$boot ${20}"
}
# loop.pid holds "<pid> <boot id> <start time>": the loop is running only if that pid
# is still that process (without /proc, a live pid is taken at its word).
loop_running() {
    local pid recorded
    [ -f "$DM_DIR/loop.pid" ] || return 1
    read -r pid recorded < "$DM_DIR/loop.pid" || [ -n "${pid:-}" ] || return 1
    case "$pid" in ''|*[!0-9]*) return 1 ;; esac
    if [ -r /proc/self/stat ]; then
        [ -n "${recorded:-}" ] && [ "$(process_identity "$pid")" = "$recorded" ]
    else
        kill -0 "$pid" 2>/dev/null
    fi
}
if loop_running; then
    say "the agent's restart loop is already running (pid $(cut -d' ' -f1 "$DM_DIR/loop.pid")); agent log: $LOG"
    exit 0
fi

fetch() {  # URL FILE
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --connect-timeout 10 --max-time 300 -o "$2" "$1"
    else
        "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$1" "$2"
    fi
}

sha256_of() {
    "$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
}

install_agent() {
    local query want got delay=2
    query="serverType=$("$PYTHON" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$SERVER_TYPE")"
    while :; do
        rm -f "$AGENT.new" "$AGENT.sha256"
        if fetch "$DEPMAN_URL/agent/depman-agent.pyz?$query" "$AGENT.new" \
                && fetch "$DEPMAN_URL/agent/depman-agent.pyz.sha256?$query" "$AGENT.sha256"; then
            want="$(tr -d ' \r\n' < "$AGENT.sha256")"
            got="$(sha256_of "$AGENT.new")"
            if [ -n "$want" ] && [ "$want" = "$got" ]; then
                mv -f "$AGENT.new" "$AGENT"
                note "installed the agent (sha256 $got)"
                return 0
            fi
            note "REFUSED the downloaded agent: its sha256 is $got, the server publishes ${want:-nothing}"
        else
            note "could not download the agent from $DEPMAN_URL"
        fi
        rm -f "$AGENT.new"
        if [ -f "$AGENT" ]; then
            note "running the agent installed earlier (it was checked when installed)"
            return 0
        fi
        note "trying again in ${delay}s"
        sleep "$delay"
        delay=$(( delay < 30 ? delay * 2 : 60 ))
    done
}

run_agent_forever() {
    local delay=1 started code
    while :; do
        # Keep the log bounded on instances that run for months: one old copy at 50 MiB.
        if [ "$(wc -c < "$LOG" 2>/dev/null || echo 0)" -gt 52428800 ]; then
            mv -f "$LOG" "$LOG.1"
        fi
        started=$(date +%s)
        "$PYTHON" "$AGENT" >> "$LOG" 2>&1 &
        echo $! > "$DM_DIR/agent.pid"
        note "agent started (pid $!)"
        wait $!
        code=$?
        if [ $(( $(date +%s) - started )) -ge 60 ]; then delay=1; fi
        note "agent exited with code $code; restarting in ${delay}s"
        sleep "$delay"
        delay=$(( delay < 30 ? delay * 2 : 60 ))
    done
}

cat > "$DM_DIR/stop.sh" <<'DEPMAN_STOP_SCRIPT'
__STOP_SCRIPT__
DEPMAN_STOP_SCRIPT

( install_agent && run_agent_forever ) < /dev/null >> "$LOG" 2>&1 &
echo "$! $(process_identity $!)" > "$DM_DIR/loop.pid"
say "restart loop started (pid $!) for server type $SERVER_TYPE against $DEPMAN_URL"
say "agent log: $LOG (tail -f it to follow the agent)"
say "to stop the agent and its loop: bash $DM_DIR/stop.sh"
