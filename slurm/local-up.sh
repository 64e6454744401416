#!/usr/bin/env bash
# A real SLURM cluster on this machine, for tests and laptops (Debian/Ubuntu, root, no systemd needed).
# Idempotent: installs what is missing, writes the configs under DIR, starts munge, MariaDB + slurmdbd
# (accounting: without it submitit cannot see a job that died), slurmctld and slurmd, and waits until the
# nodes are idle. Then: `source DIR/env.sh` (or rely on the /etc/slurm/slurm.conf link).
#
#   slurm/local-up.sh [DIR] [--nodes N]   DIR defaults to $REPNEXT_SLURM_DIR or ./.slurm
#   slurm/local-down.sh [DIR] [--purge]
#
# Always: node `$(hostname -s)` on 127.0.0.1, partition `debug` (the default). With --nodes N > 1, also
# node1..nodeN, each slurmd in its own network and UTS namespace (hostname nodeI, address SUBNET.(10+I) on
# a bridge private to this machine, listed in /etc/hosts), in partition `multi`: one job spans several
# nodes and its ranks really talk over the network. The controller listens on SUBNET.1 for them; the
# filesystem (venv, checkout, munge's socket) is shared.
#
# Settings (environment): SLURM_ACCOUNTING=1 (0: no MariaDB/slurmdbd; sacct then fails and a killed job
# hangs submitit), SLURM_CRED_EXPIRE=10 (a requeued job waits cred_expire + 1 s; Slurm's default is 120),
# SLURM_NODES=1 (what --nodes defaults to), SLURM_SUBNET=10.213.0 (the nodes' private /24).
set -euo pipefail

NODES=${SLURM_NODES:-1}
args=()
while (($#)); do
    case $1 in
        --nodes) NODES=${2:-}; shift 2 || true ;;
        --nodes=*) NODES=${1#--nodes=}; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
[[ $NODES =~ ^[0-9]+$ ]] && ((NODES >= 1 && NODES <= 8)) \
    || { echo "slurm-local: error: --nodes must be 1 to 8, got '$NODES'" >&2; exit 1; }
DIR=$(realpath -m "${args[0]:-${REPNEXT_SLURM_DIR:-.slurm}}")
SUBNET=${SLURM_SUBNET:-10.213.0}
ACCOUNTING=${SLURM_ACCOUNTING:-1}
CRED_EXPIRE=${SLURM_CRED_EXPIRE:-10}
HOST=$(hostname -s)
say() { echo "slurm-local: $*"; }
die() { echo "slurm-local: error: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (it installs packages and starts daemons)"
command -v apt-get >/dev/null || die "needs apt-get (Debian/Ubuntu); on other systems install munge and slurm by hand"

alive() {  # a pid file whose process runs (a reaped-late zombie counts as dead)
    local pid
    [[ -s $1 ]] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ -r /proc/$pid/stat ]] && [[ $(awk '{print $3}' "/proc/$pid/stat") != Z ]]
}

# one local cluster per machine (fixed ports): another checkout's would make this one fail obscurely
for pid in $(pgrep -x slurmctld || true); do
    conf=$(tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | sed -n 's/^SLURM_CONF=//p')
    [[ $conf == "$DIR/slurm.conf" ]] && continue
    die "a SLURM controller is already running (pid $pid${conf:+, config $conf}); stop it first:" \
        "bash slurm/local-down.sh ${conf:+$(dirname "$conf")}"
done

packages=(munge slurm-client slurmctld slurmd)
[[ $ACCOUNTING == 1 ]] && packages+=(slurmdbd mariadb-server)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$DIR"/{state/ctld,state/d/$HOST,run,log,db}
chmod 0755 "$DIR"
# munged runs as the munge user: its key, socket and log must sit where that user can reach. That is DIR,
# unless a folder above it is private (mktemp -d makes 0700 ones); then a folder in /tmp, linked as DIR/munge.
[[ -L $DIR/munge && ! -d $DIR/munge ]] && rm "$DIR/munge"  # its /tmp folder is gone (a reboot)
if [[ ! -L $DIR/munge ]] && ! runuser -u munge -- test -x "$DIR"; then
    rm -rf "$DIR/munge"  # an unreachable one, from an earlier start
    ln -s "$(mktemp -d /tmp/repnext-munge.XXXXXX)" "$DIR/munge"
fi
mkdir -p "$DIR/munge"
MUNGE=$(realpath "$DIR/munge")
chmod 0755 "$MUNGE"  # munged refuses a socket directory others cannot traverse
chown munge:munge "$MUNGE"
SOCKET=$MUNGE/munge.socket.2

# --- munge ---------------------------------------------------------------------------------------------
if [[ ! -s $MUNGE/munge.key ]]; then
    mungekey --create --keyfile="$MUNGE/munge.key" 2>/dev/null \
        || dd if=/dev/urandom of="$MUNGE/munge.key" bs=1 count=1024 status=none
    chown munge:munge "$MUNGE/munge.key"
    chmod 0400 "$MUNGE/munge.key"
fi
if ! alive "$MUNGE/munged.pid"; then
    runuser -u munge -- munged --key-file="$MUNGE/munge.key" --socket="$SOCKET" \
        --pid-file="$MUNGE/munged.pid" --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munge.seed"
fi

# --- configs -------------------------------------------------------------------------------------------
read -r CPUS MEM < <(slurmd -C | awk '/NodeName/ {for (i = 1; i <= NF; i++) {split($i, kv, "=");
    if (kv[1] == "CPUs") c = kv[2]; if (kv[1] == "RealMemory") m = kv[2]}} END {print c, int(m * 0.95)}')
CTLD_ADDR=127.0.0.1
MULTI=""
if ((NODES > 1)); then  # the controller must be reachable from the nodes' namespaces: the bridge's address
    CTLD_ADDR=$SUBNET.1
    for i in $(seq "$NODES"); do
        MULTI+="NodeName=node$i NodeAddr=$SUBNET.$((10 + i)) CPUs=$CPUS RealMemory=$MEM State=UNKNOWN"$'\n'
        mkdir -p "$DIR/state/d/node$i"
    done
    MULTI+="PartitionName=multi Nodes=node[1-$NODES] MaxTime=INFINITE State=UP"
fi
if [[ $ACCOUNTING == 1 ]]; then
    ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
AccountingStoragePass=$SOCKET"
else
    ACCT="AccountingStorageType=accounting_storage/none"
fi
previous=$(cat "$DIR/slurm.conf" 2>/dev/null || true)
cat >"$DIR/slurm.conf" <<EOF
ClusterName=localcluster
SlurmctldHost=$HOST($CTLD_ADDR)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET,cred_expire=$CRED_EXPIRE
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/d/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
EnforcePartLimits=ALL
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
ReturnToService=2
$ACCT
JobAcctGatherType=jobacct_gather/linux
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=300
KillWait=10
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
$MULTI
EOF
cat >"$DIR/env.sh" <<EOF
export SLURM_CONF=$DIR/slurm.conf
EOF
mkdir -p /etc/slurm
ln -sfn "$DIR/slurm.conf" /etc/slurm/slurm.conf  # slurmdbd and some clients ignore SLURM_CONF
export SLURM_CONF=$DIR/slurm.conf

# --- accounting ----------------------------------------------------------------------------------------
if [[ $ACCOUNTING == 1 ]]; then
    cat >"$DIR/db/my.cnf" <<EOF
[mysqld]
datadir=$DIR/db/data
socket=$DIR/db/mysqld.sock
pid-file=$DIR/run/mysqld.pid
log-error=$DIR/log/mysqld.log
bind-address=127.0.0.1
port=3307
user=root
innodb_buffer_pool_size=512M
innodb_lock_wait_timeout=900
EOF
    if [[ ! -d $DIR/db/data/mysql ]]; then
        mariadb-install-db --defaults-file="$DIR/db/my.cnf" --auth-root-authentication-method=normal >/dev/null
    fi
    if ! alive "$DIR/run/mysqld.pid"; then
        mariadbd --defaults-file="$DIR/db/my.cnf" >/dev/null 2>&1 &
        for _ in $(seq 60); do mariadb-admin --socket="$DIR/db/mysqld.sock" ping >/dev/null 2>&1 && break; sleep 0.5; done
    fi
    mariadb --socket="$DIR/db/mysqld.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmdb';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
    cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$SOCKET
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=slurmdb
StorageLoc=slurm_acct_db
EOF
    chmod 0600 "$DIR/slurmdbd.conf"  # slurmdbd refuses a readable config (it holds the DB password)
    if ! alive "$DIR/run/slurmdbd.pid"; then
        slurmdbd  # reads slurmdbd.conf beside $SLURM_CONF
        for _ in $(seq 60); do (exec 3<>/dev/tcp/127.0.0.1/6819) 2>/dev/null && break; sleep 0.5; done
    fi
fi

# --- the nodes' network (--nodes > 1) --------------------------------------------------------------------
# A bridge on the host holding SUBNET.1; per node a namespace with one veth end (eth0, SUBNET.(10+I)) and no
# route beyond the subnet: traffic stays between the nodes and the controller.
BRIDGE=rnx-br0
net_up() {  # called in a `||` list, where set -e does not apply: every step says when it fails
    { ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge; } || return 1
    ip addr replace "$SUBNET.1/24" dev "$BRIDGE" && ip link set "$BRIDGE" up || return 1
    local i ns
    for i in $(seq "$NODES"); do
        ns=repnext-node$i
        { [[ -e /run/netns/$ns ]] || ip netns add "$ns"; } || return 1
        { ip link show "rnx-node$i" >/dev/null 2>&1 \
            || ip link add "rnx-node$i" type veth peer name eth0 netns "$ns"; } || return 1
        ip link set "rnx-node$i" master "$BRIDGE" up && ip -n "$ns" addr replace "$SUBNET.$((10 + i))/24" dev eth0 \
            && ip -n "$ns" link set eth0 up && ip -n "$ns" link set lo up || return 1
        # the job's ranks find each other (MASTER_ADDR, gloo) by hostname
        grep -q "^$SUBNET.$((10 + i)) node$i " /etc/hosts || echo "$SUBNET.$((10 + i)) node$i # repnext-slurm" >>/etc/hosts
    done
}
if ((NODES > 1)); then
    command -v ip >/dev/null && command -v nsenter >/dev/null || die "--nodes > 1 needs ip (iproute2) and nsenter"
    net_up || die "cannot create the nodes' network namespaces (root with CAP_NET_ADMIN needed); try --nodes 1"
fi

# --- controller and nodes ------------------------------------------------------------------------------
stop() {  # a daemon by its pid file; TERM, then KILL
    alive "$1" || return 0
    kill -TERM "$(cat "$1")" 2>/dev/null
    for _ in $(seq 20); do alive "$1" || return 0; sleep 0.5; done
    kill -KILL "$(cat "$1")" 2>/dev/null || true
}
if [[ -n $previous && $previous != "$(cat "$DIR/slurm.conf")" ]]; then  # e.g. another --nodes: restart
    say "configuration changed: restarting slurmctld and slurmd"
    for pidfile in "$DIR"/run/slurmd.pid "$DIR"/run/slurmd-*.pid "$DIR/run/slurmctld.pid"; do stop "$pidfile"; done
fi
alive "$DIR/run/slurmctld.pid" || slurmctld
if [[ $ACCOUNTING == 1 ]] && ! sacctmgr -n list cluster format=cluster 2>/dev/null | grep -q localcluster; then
    sacctmgr -i add cluster localcluster >/dev/null 2>&1 || true
fi
alive "$DIR/run/slurmd-$HOST.pid" || slurmd
nodes=("$HOST")
if ((NODES > 1)); then
    for i in $(seq "$NODES"); do  # slurmd takes its node name from the hostname of its UTS namespace
        nodes+=("node$i")
        alive "$DIR/run/slurmd-node$i.pid" && continue
        # nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup mounts slurmd needs
        nsenter --net="/run/netns/repnext-node$i" unshare --uts sh -c "hostname node$i && exec slurmd" \
            || die "slurmd of node$i did not start; see $DIR/log/slurmd-node$i.log"
    done
fi
list=$(IFS=,; echo "${nodes[*]}")
for _ in $(seq 120); do
    states=$(sinfo -h -N -n "$list" -o "%N %T" 2>/dev/null || true)
    idle=$(grep -c " idle" <<<"$states" || true)
    if ((idle == ${#nodes[@]})); then
        say "nodes ${nodes[*]} idle ($CPUS CPUs, ${MEM} MB each); source $DIR/env.sh"
        exit 0
    fi
    for node in $(awk '$2 ~ /^(down|drain)/ {print $1}' <<<"$states"); do
        scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
    done
    sleep 0.5
done
die "nodes did not all become idle: $(tr '\n' ' ' <<<"${states:-none}"); see $DIR/log/"
