# relay's remote supervisor: one per host, in one long-lived SSH session.
#
# Why: sshd allows MaxSessions (default 10) sessions per connection, so a session per kernel
# caps a host at 10 kernels and makes every launch pay a channel open and the remote shell's
# start-up files. This script is started once per connection and starts and reaps every
# kernel on that host; 32 (or 300) kernels share one session and one authentication.
#
# Protocol, one line each way (words separated by one space; ID is [a-z0-9]+):
#   daemon -> here:  start ID SH-SNIPPET   the snippet sets "$@" (set -- 'kernel' 'args'...)
#                                          and may export variables (never argv: secrets)
#                    kill ID SIGNAL        signal the kernel if it still runs
#                    ping ID               answered by pong ID (round-trip time)
#                    owner ID CPORT LPORT  who made the connection from 127.0.0.1:CPORT to a
#                                          relay listener on 127.0.0.1:LPORT (4-digit upper hex)
#   here -> daemon:  hello 2 PID DIR N UID CHECK   ready; protocol version 2; N stale sessions
#                                          ended; UID is ours; CHECK is proc (owners can be
#                                          looked up in /proc/net/tcp) or none
#                    nokernel ID           the kernel executable is missing or not executable
#                    pid ID PID            the kernel started
#                    out ID TEXT           one of the last lines the kernel printed (at exit)
#                    exit ID STATUS        the kernel ended (128+N: killed by signal N)
#                    pong ID
#                    owner ID UID|-|?      the connecting socket's uid; - no such socket (the
#                                          client already left); ? this host cannot tell
# End of input (the daemon closed the session, or the connection died and sshd closed the
# pipes), SIGTERM and SIGHUP terminate every kernel this supervisor started: no remote kernel
# outlives its connection. Kernels that ignore SIGTERM get SIGKILL after 5 seconds.
#
# $1 is the daemon's tag (hex); $2 "keep" skips the clean-up below (end_stale_sessions). Each supervisor registers in ${TMPDIR:-/tmp}/relay-TAG.XXXXXX
# (its pid, and its parent's pid if that parent is an sshd session process). A connection that died silently (a black-holed network,
# sshd without ClientAliveInterval) leaves its supervisor running, and its sshd session holding
# listeners; so a new supervisor for the same daemon first ends every earlier one it owns:
# SIGTERM to the old supervisor (which reaps its kernels), SIGTERM to the old sshd session
# process (which releases its forwards), SIGKILL to kernels of a supervisor already gone.
#
# The file is joined into one line and passed as `exec /bin/sh -c '...'`, so it must not
# contain single quotes, and every line must end where a newline may become a space. ("$!" is
# safe: csh expands history only in interactive shells.)
umask 077;
case $1 in *[!0-9a-f]*|"") exit 96 ;; esac;
d=$(mktemp -d "${TMPDIR:-/tmp}/relay-$1.XXXXXX") || exit 97;
case $(ps -o comm= -p "$PPID" 2>/dev/null) in *sshd*) s=$PPID ;; *) s=- ;; esac;
echo "$$ $s" >"$d/supervisor";
n=0;
test "$2" = keep ||
for o in "${TMPDIR:-/tmp}"/relay-"$1".*; do
  test "$o" = "$d" && continue;
  test -d "$o" && test -O "$o" && test -f "$o/supervisor" || continue;
  read -r os op <"$o/supervisor";
  if kill -TERM "$os" 2>/dev/null; then n=$((n+1)); test "$op" = - || kill -TERM "$op" 2>/dev/null; else
    for f in "$o"/*.pid; do test -f "$f" && kill -KILL "$(cat "$f")" 2>/dev/null; done;
    rm -rf "$o";
  fi;
done;
reap() {
  p=$(cat "$d"/*.pid 2>/dev/null);
  if test -n "$p"; then
    kill -TERM $p 2>/dev/null;
    ( ( sleep 5; for k in $p; do kill -0 "$k" 2>/dev/null && kill -KILL "$k"; done ) </dev/null >/dev/null 2>&1 & );
  fi;
  wait;
  rm -rf "$d";
};
trap "reap; exit 0" HUP TERM INT;
if test -r /proc/net/tcp; then c=proc; else c=none; fi;
echo "hello 2 $$ $d $n $(id -u) $c";
while read -r op id arg; do
  case $op in
    start) (
        eval "$arg";
        k=$1;
        case $k in */*) test -f "$k" && test -x "$k" ;; *) command -v "$k" >/dev/null 2>&1 ;; esac || { echo "nokernel $id"; exit 0; };
        "$@" </dev/null >"$d/$id.log" 2>&1 &
        p=$!;
        echo "$p" >"$d/$id.pid";
        echo "pid $id $p";
        wait "$p";
        s=$?;
        rm -f "$d/$id.pid";
        tail -n 5 "$d/$id.log" 2>/dev/null | cut -c 1-300 | sed "s/^/out $id /";
        rm -f "$d/$id.log";
        echo "exit $id $s"
      ) & ;;
    kill) test -f "$d/$id.pid" && kill "-$arg" "$(cat "$d/$id.pid")" 2>/dev/null ;;
    ping) echo "pong $id" ;;
    owner)
      case $arg in *[!0-9A-F\ ]*|"") echo "owner $id ?"; continue ;; esac;
      if test "$c" = proc; then
        u=$(grep -h -E "^ *[0-9]+: [0-9A-F]+:${arg% *} (0100007F|0000000000000000FFFF00000100007F):${arg#* } " /proc/net/tcp /proc/net/tcp6 2>/dev/null | { read -r x x x x x x x u x; echo "$u"; });
        echo "owner $id ${u:--}";
      else echo "owner $id ?"; fi ;;
  esac;
done;
reap
