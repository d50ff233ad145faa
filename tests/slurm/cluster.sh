#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests/test_slurm.py and by hand:
#   tests/slurm/cluster.sh install   apt-get slurmctld slurmd slurm-client munge (root)
#   tests/slurm/cluster.sh start     munge key, /etc/slurm/slurm.conf, start the daemons
#   tests/slurm/cluster.sh stop      stop slurmctld and slurmd (by their pid files)
# What works on these machines is recorded in ../shared/notes/slurm-single-node.md:
# slurm.conf at the default path, no accounting (the executor plugin then uses squeue),
# MinJobAge long enough that squeue still lists finished jobs.
set -euo pipefail

STATE=${HESPOTEX_SLURM_STATE:-/var/tmp/hespotex-slurm}
CONF=/etc/slurm/slurm.conf

install_packages() {
    if command -v slurmctld >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

start_munge() {
    install -d -o munge -g munge -m 700 /etc/munge /var/log/munge /var/lib/munge
    install -d -o munge -g munge -m 755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        su -s /bin/sh munge -c "munged --force" || munged --force
    fi
}

write_conf() {
    local host cpus memory
    host=$(hostname -s)
    cpus=$(nproc)
    memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    mkdir -p "$STATE"/{ctld,d,log} /etc/slurm
    if [ -f "$CONF" ] && ! grep -q "^ClusterName=hespotex-test$" "$CONF"; then
        echo "$CONF exists and is not this test cluster's: not touching it" >&2
        return 1
    fi
    cat >"$CONF" <<EOF
ClusterName=hespotex-test
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
MinJobAge=3600
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    install_packages
    start_munge
    write_conf
    if ! [ -f "$STATE/slurmctld.pid" ] || ! kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null; then
        slurmctld
    fi
    if ! [ -f "$STATE/slurmd.pid" ] || ! kill -0 "$(cat "$STATE/slurmd.pid")" 2>/dev/null; then
        slurmd
    fi
    for _ in $(seq 60); do
        if sinfo --noheader --format=%t 2>/dev/null | grep -q -E "^(idle|mix|alloc)$"; then
            return 0
        fi
        sleep 1
    done
    echo "SLURM did not come up; see $STATE/log" >&2
    return 1
}

stop() {
    for daemon in slurmd slurmctld; do
        if [ -f "$STATE/$daemon.pid" ]; then
            kill "$(cat "$STATE/$daemon.pid")" 2>/dev/null || true
            rm -f "$STATE/$daemon.pid"
        fi
    done
}

case "${1:-}" in
    install) install_packages ;;
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
