#!/usr/bin/env bash
# Stop the local SLURM cluster started by slurm/local-up.sh: cancel jobs, stop the daemons by their pid
# files (TERM, then KILL after 10 s), remove the nodes' namespaces (and what still runs in them), veths,
# bridge and /etc/hosts lines. --purge also removes DIR and the /etc/slurm/slurm.conf link.
#
#   slurm/local-down.sh [DIR] [--purge]
set -uo pipefail

purge=0
args=()
for a in "$@"; do [[ $a == --purge ]] && purge=1 || args+=("$a"); done
DIR=$(realpath -m "${args[0]:-${REPNEXT_SLURM_DIR:-.slurm}}")
net_down() {  # what local-up.sh --nodes N made (names fixed there)
    local ns pid
    for ns in /run/netns/repnext-node*; do
        [[ -e $ns ]] || continue
        for pid in $(ip netns pids "${ns##*/}" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
        ip netns del "${ns##*/}"
    done
    for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^rnx-(node[0-9]+|br0)$'); do
        ip link del "$link" 2>/dev/null
    done
    if grep -q '# repnext-slurm$' /etc/hosts 2>/dev/null; then
        hosts=$(grep -v '# repnext-slurm$' /etc/hosts)
        printf '%s\n' "$hosts" >/etc/hosts  # in place: /etc/hosts may be a mount point
    fi
}
[[ -d $DIR ]] || { net_down; echo "slurm-local: nothing at $DIR"; exit 0; }
export SLURM_CONF=$DIR/slurm.conf

alive() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ -r /proc/$pid/stat ]] && [[ $(awk '{print $3}' "/proc/$pid/stat") != Z ]]
}

[[ -f $SLURM_CONF ]] && scancel --user=root >/dev/null 2>&1
for pidfile in "$DIR"/run/slurmd.pid "$DIR"/run/slurmd-*.pid "$DIR/run/slurmctld.pid" "$DIR/run/slurmdbd.pid" \
               "$DIR/run/mysqld.pid" "$DIR/munge/munged.pid"; do
    alive "$pidfile" || continue
    kill -TERM "$(cat "$pidfile")" 2>/dev/null
    for _ in $(seq 20); do alive "$pidfile" || break; sleep 0.5; done
    alive "$pidfile" && kill -KILL "$(cat "$pidfile")" 2>/dev/null
done
command -v ip >/dev/null && net_down
if ((purge)); then
    [[ $(readlink /etc/slurm/slurm.conf 2>/dev/null) == "$DIR/slurm.conf" ]] && rm -f /etc/slurm/slurm.conf
    [[ -L $DIR/munge ]] && rm -rf "$(readlink "$DIR/munge")"  # munge's folder in /tmp (see local-up.sh)
    rm -rf "$DIR"
fi
if ((purge)); then echo "slurm-local: stopped, $DIR removed"; else echo "slurm-local: stopped"; fi
