# relay's installer of its files on a kernel's host: writes one (RelayKernelInit.wl, the
# kernel hook, or relayagent.py, relay's agent) into ~/.cache/relay/VERSION/ from this
# session's standard input, in one exec session of its own, and starts the agent from it.
#
# Why not SFTP: an sshd without a "Subsystem sftp" line refuses it, and Tunnel needed none.
# Every sshd that can run relay's supervisor can run this.
#
# Arguments: $1 VERSION (hex: the first 16 digits of the file's sha256), $2 the file's NAME,
# $3 how many days an unused version directory is kept, $4 the versions of relay's other
# files (comma-separated, or -), never pruned: a new connection installs two at once, the
# kernel hook beside the agent, and each would take the other's directory for an old one
# (a review's finding); $5 the file's SIZE in bytes: an upload cut short (a session whose
# connection was lost, whose input ends only when sshd lets it go, long after) is never
# installed over a whole one. For relay's agent (docs/agent.md), then "agent", its TAG
# (hex) and WINDOW_S: the file installed is then started, in this same session, so that a
# host's login (a slow ~/.bashrc, module loads) is paid once, not twice; and its GENERATION
# (digits: the daemon numbers its starts, and an agent never ends a later start's agent).
# Output, on success:  "ok PATH" on one line, then the installed file's bytes, which the daemon
#                      hashes: the file is proven by its content, not by this script's word;
#                      for the agent, then "supervised" where an old-path supervisor of
#                      TAG has its record in TMPDIR (supervisor.sh: a session a silent
#                      loss may have left, which the daemon then sweeps), then its start
#                      line (agent 1 ..., or agent newer N where a later start's agent
#                      runs), or "agent none" alone where there is no python3 (nothing
#                      installed).
#          otherwise:  "refuse REASON PATH" (REASON: nohome, symlink, notdir, notmine, writable,
#                      notfile, nowrite, short) and exit 1; nothing outside
#                      ~/.cache/relay is touched (but ~/.cache is made if missing).
#
# Safety: ~/.cache/relay and the version directory must be real directories (not symlinks),
# owned by the user, and writable by nobody else; they are created 0700. ~/.cache and the
# directories above it, to the home directory, must be the user's or root's and writable by
# nobody else (safedirs.sh, whose functions come first): whoever could write one could swap
# ~/.cache/relay after these checks, and the agent is run, and the hook loaded by every
# later kernel, from there by name (a review's finding: another uid's code run as the user). The file is written
# to a .part file next to it and renamed, so a reader never sees half of it (the .part is
# named by host and pid: an NFS home shared by a login node and its compute nodes may see
# two installs with the same pid at once, and each would write into the other's); the .part is
# removed on every way out (and ones left by a killed upload after 10 minutes). Where the .part
# cannot be written (a home full, over quota or read-only) and a file of the upload's size is
# installed, the rest of the upload is read and that one is used: the daemon proves it by its
# hash, and every new connection failed though relay's files were there (a review's
# finding). Version
# directories of other relay releases not used for $3 days are pruned (names of hex digits
# only: ~/.cache/relay/bytecode, the daemon's own where this is its machine, is not one); the
# one in use is touched on every install (each connection installs once).
#
# Joined into one line and read by /bin/sh from the session's standard input, the file's
# bytes after it (see supervisor.sh): every line ends where a newline may become a space.
# A path is said with printf, never echo: dash's echo reads backslashes in it (a HOME of
# /home/a\nb said "ok /home/a", a newline, and the rest; a review's finding).
#
# relay's files are made private (umask 077), but the agent's kernels are made with the
# login's umask, as `ssh host math` would make them (a review's finding: files a kernel wrote
# were private): the agent is told it in RELAY_UMASK, which it removes from what kernels get.
# So with the login's LC_CTYPE, in RELAY_LC_CTYPE ("=VALUE", or "-" where it had none): a
# python3 of 3.7 or later sets LC_CTYPE=C.UTF-8 in its environment where the locale is C
# (PEP 538), and kernels got that where the login had none.
m=$(umask); umask 077;
case $1 in *[!0-9a-f]*|"") exit 96 ;; esac;
case $2 in *[!A-Za-z0-9.]*|"") exit 96 ;; esac;
case $3 in *[!0-9]*|"") exit 96 ;; esac;
case $4 in *[!0-9a-f,-]*|"") exit 96 ;; esac;
case $5 in *[!0-9]*|"") exit 96 ;; esac;
case $6 in
  "") ;;
  agent) case $7 in *[!0-9a-f]*|"") exit 96 ;; esac; case $8 in *[!0-9]*|"") exit 96 ;; esac;
    case $9 in *[!0-9]*|"") exit 96 ;; esac;
    command -v python3 >/dev/null 2>&1 || { cat >/dev/null; echo "agent none"; exit 0; } ;;
  *) exit 96 ;;
esac;
no() { printf 'refuse %s %s\n' "$1" "$2"; cat >/dev/null; exit 1; };
test -n "$HOME" && test -d "$HOME" || no nohome "${HOME:--}";
r=$HOME/.cache/relay;
v=$r/$1;
test -d "$HOME/.cache" || mkdir "$HOME/.cache" 2>/dev/null;
cache_safe || no "$why" "$at";
for x in "$r" "$v"; do
  test -L "$x" && no symlink "$x";
  test -e "$x" || mkdir "$x" 2>/dev/null || test -d "$x" || no nowrite "$x";
  test -L "$x" && no symlink "$x";
  test -d "$x" || no notdir "$x";
  test -O "$x" || no notmine "$x";
  case $(ls -ld "$x") in d????-??-*) ;; *) no writable "$x" ;; esac;
done;
t=$v/$2;
p=$t.$(uname -n 2>/dev/null).$$.part;
trap "rm -f \"\$p\"" EXIT;
trap "rm -f \"\$p\"; exit 1" HUP TERM INT;
if { cat >"$p"; } 2>/dev/null; then
  n=$(wc -c <"$p") && test $n -eq "$5" || no short "$t";
  test -L "$t" && rm -f "$t";
  if test -f "$t" && cmp -s "$p" "$t"; then rm -f "$p";
  elif test -e "$t" && test ! -f "$t"; then no notfile "$t";
  else mv -f "$p" "$t" || no nowrite "$t"; fi;
else
  rm -f "$p";
  test -f "$t" && test ! -L "$t" && n=$(wc -c <"$t") && test $n -eq "$5" || no nowrite "$t";
  cat >/dev/null;
fi;
touch "$v";
for o in "$r"/*; do
  test "$o" = "$v" && continue;
  case ${o##*/} in *[!0-9a-f]*|"") continue ;; esac;
  case ",$4," in *",${o##*/},"*) continue ;; esac;
  test -d "$o" && test ! -L "$o" && test -O "$o" || continue;
  test -n "$(find "$o" -prune -mtime +"$3" 2>/dev/null)" && rm -rf "$o";
done;
for f in "$v"/*.part; do
  test -f "$f" && test ! -L "$f" && test -n "$(find "$f" -prune -mmin +10 2>/dev/null)" && rm -f "$f";
done;
printf 'ok %s\n' "$t";
cat "$t";
test -z "$6" || for d in "${TMPDIR:-/tmp}"/relay-"$7".*; do test -d "$d" && test ! -L "$d" && test -O "$d" && { echo supervised; break; }; done;
test -z "$6" || { RELAY_UMASK=$m; RELAY_LC_CTYPE=${LC_CTYPE+=}${LC_CTYPE--}; export RELAY_UMASK RELAY_LC_CTYPE; exec python3 -I "$t" start "$7" "$8" "$9"; };
