#!/usr/bin/env bash
# Stop, by PID from $BASE/run/*.pid, the daemons started by slurm/local/up.sh (reverse order).
BASE=${BASE:-$PWD/.slurm}
for d in slurmd slurmctld slurmdbd mariadbd munged; do
  f="$BASE/run/$d.pid"; [ -f "$f" ] || continue
  p=$(cat "$f")
  if kill "$p" 2>/dev/null; then
    for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && echo "$d ($p) still alive" || echo "$d ($p) stopped"
  else echo "$d ($p) not running"; fi
  rm -f "$f"
done
