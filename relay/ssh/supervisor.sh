# relay's remote supervisor: one per host, in one long-lived SSH session.
#
# Why: sshd allows MaxSessions (default 10) sessions per connection, so a session per kernel
# caps a host at 10 kernels and makes every launch pay a channel open and the remote shell's
# start-up files. This script is started once per connection and starts and reaps every
# kernel on that host; 32 (or 300) kernels share one session and one authentication.
#
# Protocol, one line each way (words separated by one space; ID is [A-Za-z0-9]+):
#   daemon -> here:  start ID SH-SNIPPET   the snippet sets "$@" (set -- 'kernel' 'args'...)
#                                          and may export variables (never argv: secrets)
#                    kill ID SIGNAL        signal the kernel if it still runs
#                    ping ID               answered by pong ID (round-trip time)
#                    which ID SH-SNIPPET   is the snippet's "$1" a kernel start would find?
#                                          (found ID, or nokernel ID); nothing is started
#                    owner ID CPORT LPORT  who made the connection from 127.0.0.1:CPORT to a
#                                          relay listener on 127.0.0.1:LPORT (4-digit upper hex):
#                                          only a live (ESTABLISHED, inode not 0) loopback
#                                          socket is anyone's; a closing one reads uid 0
#   here -> daemon:  hello 4 PID DIR N UID CHECK   ready; protocol version 4; N stale sessions
#                                          ended; UID is ours; CHECK is proc (owners can be
#                                          looked up in /proc/net/tcp) or none
#                    nokernel ID           the kernel executable is missing or not executable
#                    found ID              (to which) it is there and executable
#                    norecord ID           its pid could not be recorded (TMPDIR full): killed
#                    nofork ID             (to start or which) the shell could not fork to do it:
#                                          the user's process limit (ulimit -u) is reached
#                    pid ID PID            the kernel started
#                    out ID TEXT           one of the last lines the kernel printed (at exit)
#                    exit ID STATUS        the kernel ended (128+N: killed by signal N)
#                    pong ID
#                    owner ID UID|-|c|?    the connecting socket's uid; - no such socket (the
#                                          client already left); c it is closing or orphaned
#                                          (nobody's; one another uid holds is that uid's, not
#                                          c); ? this host cannot tell
# End of input (the daemon closed the session, or the connection died and sshd closed the
# pipes), SIGTERM and SIGHUP terminate every kernel this supervisor started: no remote kernel
# outlives its connection. Kernels that ignore SIGTERM get SIGKILL after 5 seconds.
#
# $1 is this connection's tag (hex: the daemon and the host entry, so two host names for one
# account never share one); $2 "keep" skips the clean-up below (end_stale_sessions); $3 is how
# many seconds without a ping make a session stale. Each supervisor registers in
# ${TMPDIR:-/tmp}/relay-TAG.XXXXXX: "supervisor" holds its pid and start time, and its sshd
# session process's (or -); "alive" holds the time of the daemon's last ping (every keepalive
# interval), made before "supervisor" and replaced whole at each ping (written aside, then
# mv: a clean-up that read it emptied would take a live session for a stale one); each
# kernel's "ID.pid" holds its pid and start time. A ping sets the times of
# all of them to now once an hour: cleaners of /tmp (systemd-tmpfiles' "q /tmp ... 10d",
# tmpwatch) take files by age, and a session weeks old whose records went would be invisible
# to the clean-up below (and its kernels' last lines gone with their logs).
#
# A connection that died silently (a black-holed network, sshd without ClientAliveInterval)
# leaves its supervisor running and its sshd session holding listeners; so a new supervisor
# ends an earlier one of the same tag only when nobody has pinged it for $3 seconds (a live
# one, even from another machine that happens to share the tag, is pinged every interval),
# and only processes whose pid AND start time are the recorded ones: SIGTERM to the old
# supervisor (which reaps its kernels) and to its sshd session (which releases its forwards);
# SIGKILL to kernels of a supervisor already gone, whose directory is then removed. Symlinks
# and directories that are not the user's are never followed.
#
# Kernels are known in memory too: each runs under a watcher subshell that forwards signals
# to it (USR1 standing for KILL, and USR2 for INT, which a background subshell of dash or
# busybox cannot trap), so a full TMPDIR cannot make a kernel unkillable; a kernel
# whose pid cannot be recorded is killed and reported (norecord ID). $w lists the kernels'
# IDs, and w_ID holds the watcher's pid and start time: a watcher is signalled (ws) only if
# its pid still has that start time (where this host shows none, by pid; where it does, a
# watcher already gone when its start time was read is not signalled at all), for once
# this shell has reaped an exited watcher its pid is free, and another process of the
# user's may have it by the time the session ends. Each ping forgets the watchers that are
# gone (wl), so the list is of kernels running, not of every kernel the session started.
# Where setsid is (util-linux, busybox: Linux hosts; not macOS), each kernel runs in a process
# group of its own ($g is "-"), and TERM, HUP and KILL go to the group, so a kernel's own
# children (subkernels, StartProcess) end with it; an interrupt goes to the kernel alone. A
# kernel being ended that has exited gets SIGKILL sent to what is left of its group once it
# is reaped: the group's id is not given to another process while a member of it lives (with
# none left it is free, but the kill follows the reap at once, and Linux gives a pid again
# only after it has gone round all the others). A background job of this shell leads no
# group, so setsid does not fork: $! is the kernel. Until setsid has run in it, the group
# is not there yet: the pid is signalled instead.
#
# A background job of a shell without job control starts with SIGINT and SIGQUIT ignored
# (POSIX), and SIG_IGN survives exec: a kernel, and what it runs, could not be interrupted.
# Where env can set them back (GNU coreutils 8.31 and later: $ds), the kernel starts with
# them as any process does (unless its path has a "=", which env would take for a variable);
# elsewhere they stay ignored.
#
# The file is joined into one line (relay.ssh.remote_scripts.one_line), which /bin/sh reads
# from the session's standard input (remote_scripts.BOOTSTRAP: the login shell never sees
# it, so tcsh's history "!" and fish's syntax do not matter), so every line must end where a
# newline may become a space.
#
# relay's own files are private (umask 077); each kernel starts with the login's umask ($m),
# set in its own process before its exec (its log, opened before, stays private), as `ssh
# host math` would start it: files a kernel wrote were private (a review's finding).
m=$(umask); umask 077;
case $1 in *[!0-9a-f]*|"") exit 96 ;; esac;
case $3 in *[!0-9]*|"") exit 96 ;; esac;
st() { if test -r "/proc/$1/stat"; then read -r x <"/proc/$1/stat" 2>/dev/null && x=${x##*) } && set -- $x && echo "p${20}"; else ps -o lstart= -p "$1" 2>/dev/null | tr -d " "; fi; };
same() { test -n "$2" && test "$(st "$1")" = "$2"; };
have() { case $1 in */*) test -f "$1" && test -x "$1" ;; *) command -v "$1" >/dev/null 2>&1 ;; esac; };
if have setsid; then g=-; else g=; fi;
if test -n "$(st $$)"; then sw=1; else sw=; fi;
if env --default-signal=INT,QUIT true >/dev/null 2>&1; then ds="env --default-signal=INT,QUIT"; else ds=; fi;
d=$(mktemp -d "${TMPDIR:-/tmp}/relay-$1.XXXXXX") || exit 97;
case $(ps -o comm= -p "$PPID" 2>/dev/null) in *sshd*) s=$PPID ;; *) s=- ;; esac;
date +%s >"$d/alive";
echo "$$ $(st $$) $s $(st $s)" >"$d/supervisor.new" && mv -f "$d/supervisor.new" "$d/supervisor" || { rm -rf "$d"; exit 98; };
n=0; k=0;
test "$2" = keep ||
for o in "${TMPDIR:-/tmp}"/relay-"$1".*; do
  test "$o" = "$d" && continue;
  test -L "$o" && continue;
  test -d "$o" && test -O "$o" && test ! -L "$o/supervisor" && test -f "$o/supervisor" || continue;
  a=$(cat "$o/alive" 2>/dev/null); now=$(date +%s);
  case $a in *[!0-9]*|"") a=0 ;; esac;
  test $((now - a)) -lt "$3" && continue;
  read -r os ost op opt <"$o/supervisor";
  if same "$os" "$ost" && kill -TERM "$os" 2>/dev/null; then n=$((n+1)); same "$op" "$opt" && kill -TERM "$op" 2>/dev/null; else
    for f in "$o"/*.pid; do test -f "$f" && test ! -L "$f" && read -r kp kst <"$f" && same "$kp" "$kst" && { kill -KILL -"$kp" 2>/dev/null; kill -KILL "$kp" 2>/dev/null; }; done;
    same "$op" "$opt" && kill -TERM "$op" 2>/dev/null;
    rm -rf "$o";
  fi;
done;
w=;
ws() { eval "set -- $1 \${w_$2:-}"; test $# -ge 2 && kill -0 "$2" 2>/dev/null && { test $# = 2 || same "$2" "$3"; } && kill "-$1" "$2" 2>/dev/null; };
wl() { eval "set -- \${w_$1:-}"; test $# -ge 1 && kill -0 "$1" 2>/dev/null; };
# A watcher's signals, passed on to its kernel ($p): TERM, HUP and KILL (USR1) to its group
# first ($g), INT (USR2) to it alone. Its traps are set before anything else it does: set
# after the kernel's fork, as they were, a kill line (or the session's end) between the two
# ended the watcher itself, the kernel ran on with nobody to end it, and bash's EXIT trap
# took that death for a fork that failed (nofork) (a review's finding). One that would end
# the kernel is kept ($q: the status it gives, KILL's over the others'): one that came
# before the fork has the kernel not started (exit ID 128+N, no pid); one that came after
# it, before the pid is said, is sent again once it is (said twice, TERM and HUP are
# harmless). An interrupt before the fork is dropped: nothing to interrupt.
# A kernel's process is forked with this one's traps and lets go of them in its shell's
# own code, before it runs anything of ours: a TERM or HUP it gets before then is caught
# and dropped. On a loaded host a child may not run for tens of ms after its fork: the pid
# said, a kill line's signal passed on, all before the kernel ran at all, and it ran on (a
# review's finding: under load, a few kills in a thousand, dash and busybox). Where its group
# is there (setsid has run) it has let go of them; where it is not, or cannot be known
# (no setsid), the signal is marked in a file ($d/ID.TERM or ID.HUP) before it is sent,
# and the kernel's process ends on a mark it finds once it runs (ke): sent before its
# shell let go, the signal was marked before ke looked; sent after, it is not lost.
# (A full TMPDIR that cannot take an empty file leaves that window as it was.)
fw() { if test "$1" = INT; then test -z "$p" || kill -INT "$p" 2>/dev/null; else test "$q" = 137 || q=$2; test -z "$p" || { e=1; test -n "$g" && kill "-$1" "-$p" 2>/dev/null || { test "$1" = KILL || true 2>/dev/null >"$d/$id.$1"; kill "-$1" "$p" 2>/dev/null; }; }; fi; };
ke() { test ! -e "$d/$id.TERM" || exit 143; test ! -e "$d/$id.HUP" || exit 129; };
# The clean-up signals a watcher once its traps are set, which its pid file says (written
# after them): one signalled before (the end of input or a signal just after its fork) died
# of it, its kernel left running unwatched. Waited for up to 5 s, in whole seconds (POSIX
# sleep), and only in that case.
ready() { n=0; while wl "$1" && ! test -e "$d/$1.pid" && test $n -lt 5; do sleep 1; n=$((n + 1)); done; };
reap() {
  f=;
  for i in $w; do ready "$i"; ws TERM "$i"; done;
  test -n "$w" && ( ( sleep 5; for i in $w; do ws USR1 "$i"; done ) </dev/null >/dev/null 2>&1 & );
  wait;
  rm -rf "$d";
};
# a signal in the middle of a start ($b) ends the session once the new kernel is listed
b=; z=; trap 'z=1; test -n "$b" || { f=; reap; exit 0; }' HUP TERM INT;
if test -r /proc/net/tcp; then c=proc; else c=none; fi;
me=$(id -u);
printf 'hello 4 %s %s %s %s %s\n' "$$" "$d" "$n" "$me" "$c";
# A fork that fails (the user's process limit, ulimit -u, reached) is an error that ends a
# POSIX sh (dash and busybox at once, bash after its own retries, about 15 s), with "Cannot
# fork" on stderr and nothing said: the launch waited out launch_timeout_s. So a request
# in flight ($f: 1; 2 once a start's watcher runs, which answers for the start) is
# answered on the way out (nofork for a start or a which), and a watcher that cannot fork
# its kernel, or record it, says nofork too (its own EXIT trap; the kernel killed). The
# `command` prefix would keep the error to the request in dash, but not in busybox, whose
# forked children unwind into the parent's handler and run on as a second main loop.
said() { case $f$op in 1start|1which) echo "nofork $id" ;; esac; f=; };
f=; trap said EXIT;
while read -r op id arg; do
  f=1;
  case $op in
    start) b=1; (
        p=; e=; q=; trap 'fw TERM 143' TERM; trap 'fw INT' USR2; trap 'fw HUP 129' HUP; trap 'fw KILL 137' USR1;
        eval "$arg";
        have "$1" || { echo "nokernel $id"; exit 0; };
        case $1 in *=*) ds= ;; esac;
        test -z "$q" || { echo "exit $id $q"; exit 0; };
        trap 'test -z "$p" || kill -KILL "$p" 2>/dev/null; echo "nofork $id"' EXIT;
        if test -n "$g"; then ( ke; umask "$m"; exec setsid $ds "$@" ) </dev/null >"$d/$id.log" 2>&1 & else ( ke; umask "$m"; exec $ds "$@" ) </dev/null >"$d/$id.log" 2>&1 & fi;
        p=$!;
        echo "$p $(st $p)" >"$d/$id.pid" || { trap - EXIT; kill -KILL "$p"; echo "norecord $id"; rm -f "$d/$id.pid"; exit 0; };
        trap - EXIT; echo "pid $id $p"; case $q in 143) fw TERM ;; 129) fw HUP ;; 137) fw KILL ;; esac;
        # a trapped signal (passed on to the kernel) ends a wait early with 128+N; the
        # kernel's own status is what the last wait collects (127: collected already)
        while :; do wait "$p"; s=$?; kill -0 "$p" 2>/dev/null || break; done;
        wait "$p" 2>/dev/null; r=$?; test "$r" = 127 || s=$r;
        trap 'echo "exit $id $s"' EXIT;
        test -n "$e" && test -n "$g" && kill -KILL -"$p" 2>/dev/null;
        # no kernel left to pass a signal on to: one that came after the removal below
        # marked the kernel gone, and the mark stayed until the session ended
        p=; rm -f "$d/$id.pid" "$d/$id.TERM" "$d/$id.HUP";
        tail -n 5 "$d/$id.log" 2>/dev/null | cut -c 1-300 | sed "s/^/out $id /";
        rm -f "$d/$id.log";
        trap - EXIT; echo "exit $id $s"
      ) &
      w="$w $id"; eval "w_$id=$!"; f=2; t=$(st $!);
      if test -n "$t"; then eval "w_$id=\"\$w_$id \$t\""; elif test -n "$sw"; then eval "w_$id="; fi;
      b=; test -z "$z" || { reap; exit 0; } ;;
    kill) case $arg in KILL) ws USR1 "$id" ;; INT) ws USR2 "$id" ;; TERM|HUP) ws "$arg" "$id" ;; esac ;;
    ping) t=$(date +%s); echo "$t" >"$d/alive.new" && mv -f "$d/alive.new" "$d/alive";
      q=; for i in $w; do if wl "$i"; then q="$q $i"; else unset "w_$i"; fi; done; w=$q;
      test $((t - k)) -ge 3600 && touch -c "$d" "$d"/* 2>/dev/null && k=$t;
      echo "pong $id" ;;
    which) ( eval "$arg"; if have "$1"; then echo "found $id"; else echo "nokernel $id"; fi ) & ;;
    owner)
      case $arg in *[!0-9A-F\ ]*|"") echo "owner $id ?"; continue ;; esac;
      if test "$c" = proc; then
        l="(0100007F|0000000000000000FFFF00000100007F)";
        u=$(grep -h -E "^ *[0-9]+: $l:${arg% *} $l:${arg#* } " /proc/net/tcp /proc/net/tcp6 2>/dev/null | { r=-; while read -r x x x t x x x v x i x; do if test "${i:-0}" != 0 && { test "$t" = 01 || test "$v" != "$me"; }; then r=$v; break; fi; r=c; done; echo "$r"; });
        echo "owner $id ${u:--}";
      else echo "owner $id ?"; fi ;;
  esac;
  f=;
done;
reap
