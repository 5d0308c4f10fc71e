#!/usr/bin/env bash
# A single-node test cluster on this host (used by the tests and the README): munged + [mariadbd +
# slurmdbd] + slurmctld + slurmd, all config/state/logs/pids/sockets under $BASE. Run as root.
# SlurmctldParameters=preempt_send_user_signal makes Slurm deliver the preemption signal (submitit's USR2).
# Prereq:  apt-get install -y slurm-wlm munge   (make setup does it; Debian 12: Slurm 22.05.8)
#          ACCOUNTING=1 also needs: apt-get install -y --no-install-recommends slurmdbd mariadb-server
# Usage:   BASE=$PWD/.slurm [ACCOUNTING=1] bash slurm/local/up.sh ; export SLURM_CONF=$BASE/etc/slurm.conf
# Stop:    BASE=$PWD/.slurm bash slurm/local/down.sh
# Idempotent: when the daemons of $BASE are already up and the node is idle/allocated, it does nothing.
set -euo pipefail
BASE=${BASE:-$PWD/.slurm}
if [ -f "$BASE/run/slurmctld.pid" ] && kill -0 "$(cat "$BASE/run/slurmctld.pid")" 2>/dev/null \
   && SLURM_CONF=$BASE/etc/slurm.conf sinfo -h -N -o "%T" 2>/dev/null | grep -qE "^(idle|mixed|allocated)"; then
  echo "slurm already up under $BASE"; exit 0
fi
ACCOUNTING=${ACCOUNTING:-0}
NODE=$(hostname -s)
NCPU=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 1024 ))
MSOCK=$BASE/munge/munge.socket.2
mkdir -p "$BASE"/{etc,log,state,spool,run,munge,out}
chmod 711 "$BASE/munge"
[ -f "$BASE/munge/munge.key" ] || { dd if=/dev/urandom of="$BASE/munge/munge.key" bs=1 count=1024 status=none; chmod 400 "$BASE/munge/munge.key"; }

if [ "$ACCOUNTING" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
# for slurmdbd, AccountingStoragePass = the munge socket used to talk to slurmdbd (AuthInfo is not used there)
AccountingStoragePass=${MSOCK}
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
cat > "$BASE/etc/slurm.conf" <<CONF
ClusterName=local
SlurmctldHost=${NODE}
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${MSOCK}
StateSaveLocation=${BASE}/state
SlurmdSpoolDir=${BASE}/spool
SlurmctldPidFile=${BASE}/run/slurmctld.pid
SlurmdPidFile=${BASE}/run/slurmd.pid
SlurmctldLogFile=${BASE}/log/slurmctld.log
SlurmdLogFile=${BASE}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
${ACCT}
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SlurmctldParameters=preempt_send_user_signal
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${NCPU} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
export SLURM_CONF="$BASE/etc/slurm.conf"
now() { date +%s.%N; }
T0=$(now)

munged --key-file="$BASE/munge/munge.key" --socket="$MSOCK" --pid-file="$BASE/run/munged.pid" \
       --log-file="$BASE/log/munged.log" --seed-file="$BASE/munge/munged.seed" --force
for i in $(seq 50); do [ -S "$MSOCK" ] && break; sleep 0.1; done
munge -S "$MSOCK" -n | unmunge -S "$MSOCK" | grep -q "Success" && echo "munge OK"

if [ "$ACCOUNTING" = 1 ]; then
  DB=$BASE/mysql; mkdir -p "$DB"
  [ -d "$DB/data/mysql" ] || mariadb-install-db --no-defaults --datadir="$DB/data" --user=root \
      --auth-root-authentication-method=normal --skip-test-db > "$BASE/log/mariadb-install.log" 2>&1
  setsid mariadbd --no-defaults --user=root --datadir="$DB/data" --socket="$DB/mysqld.sock" \
      --pid-file="$BASE/run/mariadbd.pid" --bind-address=127.0.0.1 --port=3307 \
      --log-error="$BASE/log/mariadb.err" --innodb-buffer-pool-size=64M < /dev/null > /dev/null 2>&1 &
  for i in $(seq 150); do mariadb --no-defaults -S "$DB/mysqld.sock" -uroot -e "select 1" >/dev/null 2>&1 && break; sleep 0.2; done
  mariadb --no-defaults -S "$DB/mysqld.sock" -uroot -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
  cat > "$BASE/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=${MSOCK}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=${BASE}/run/slurmdbd.pid
LogFile=${BASE}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
  chmod 600 "$BASE/etc/slurmdbd.conf"
  slurmdbd    # no -f option: reads slurmdbd.conf from dirname($SLURM_CONF); daemonizes
  for i in $(seq 100); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.2; done
  echo "mariadbd pid $(cat $BASE/run/mariadbd.pid)  slurmdbd pid $(cat $BASE/run/slurmdbd.pid)"
fi

slurmctld -f "$SLURM_CONF"          # daemonizes; pid file in $BASE/run
slurmd -f "$SLURM_CONF" -N "$NODE"  # daemonizes; pid file in $BASE/run
for i in $(seq 150); do sinfo -h -N -o "%T" 2>/dev/null | grep -qE "^idle" && break; sleep 0.2; done
echo "munged pid $(cat $BASE/run/munged.pid)  slurmctld pid $(cat $BASE/run/slurmctld.pid)  slurmd pid $(cat $BASE/run/slurmd.pid)"
sinfo
echo "startup to idle node: $(awk -v a="$(now)" -v b="$T0" 'BEGIN{printf "%.1f", a - b}') s"
