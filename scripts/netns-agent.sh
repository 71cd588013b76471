#!/bin/sh
# Open MPI launch agent for the emulated cluster of scripts/cluster.sh: use it in place of ssh,
#   mpirun --mca plm_rsh_agent "$PWD/scripts/netns-agent.sh" ...   (`scripts/cluster.sh flags`)
# Open MPI 4.1 calls it as `AGENT [options from plm_rsh_args] HOST word...`, where the words
# are one shell command line (orted and its arguments, some quoted for a remote shell), the
# same as `ssh HOST word...`. ssh-style options before HOST are skipped; the command runs
# in network namespace HOST (`ip netns exec`, root only) under `sh -c`, with this process's
# environment; orted calls it the same way when it launches further daemons (tree spawn).
# HOST may also be a name or address from the /etc/hosts block that cluster.sh writes.
me=netns-agent.sh
while [ $# -gt 0 ]; do
  case $1 in
    --) shift; break ;;
    -[BbcDEeFIiJLlmOoPpQRSWw]) shift 2 ;;  # ssh options that take a separate value
    -?*) shift ;;                            # flags, or an option with its value attached
    *) break ;;
  esac
done
if [ $# -lt 1 ]; then echo "$me: usage: $me [options] HOST command..." >&2; exit 255; fi
host=$1; shift
if [ $# -eq 0 ]; then echo "$me: no command for $host (no interactive login)" >&2; exit 255; fi

# A namespace of that name, else one of the names /etc/hosts gives that name or address
# (read directly: no DNS look-up).
ns=
names=$(awk -v h="$host" '!/^#/ {
  for (i = 1; i <= NF; i++) if ($i == h) { for (j = 2; j <= NF; j++) print $j; next } }' /etc/hosts 2>/dev/null)
for n in "$host" "${host%%.*}" $names; do
  [ -n "$n" ] && [ -e "/var/run/netns/$n" ] && { ns=$n; break; }
done
if [ -z "$ns" ]; then
  echo "$me: no network namespace for host '$host' (is the cluster up? scripts/cluster.sh status)" >&2
  exit 255
fi
# Also a UTS namespace named after the host, as on a real cluster (hostname,
# MPI_Get_processor_name); without unshare, the host keeps this machine's name.
if command -v unshare >/dev/null && unshare --uts true 2>/dev/null; then
  exec ip netns exec "$ns" unshare --uts sh -c 'hostname "$1" && exec sh -c "$2"' sh "$ns" "$*"
fi
exec ip netns exec "$ns" sh -c "$*"
