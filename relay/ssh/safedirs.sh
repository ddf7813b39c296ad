# relay's check, in POSIX sh, that nobody but the user (or root) could swap ~/.cache or a
# directory above it, and with it ~/.cache/relay and the code relay runs from there (the
# agent, the kernel hook, relay check's probe). relay/safepath.py is its twin on relay's own
# machine: OpenSSH's rule for the files it trusts. A directory on the real path of ~/.cache,
# up to and including the home directory (else up to /), and the home directory itself,
# must be owned by the user or root and writable by nobody else; one with the sticky bit
# (/tmp, a cluster's /scratch) may be, and a group-writable one whose group is the user's
# own (named as the user, primary, no other listed member: Debian's user private groups,
# where a umask of 002 makes ~/.cache 0775). Debian's OpenSSH also asks that no other user
# has that group as primary; that needs the whole passwd database, which LDAP sites often
# do not list, and is not asked here. With an ACL ("+" after the mode) the group bits are its
# mask, and another user may be named in it: no relaxation then (busybox's ls shows no "+").
#
# cache_safe returns 1 for the first directory at fault, with $why (notmine, writable) and
# $at (its path); 0 where all are sound, or where ~/.cache is not there yet (whoever makes
# it later is checked then). Prepended to a one-line script (remote_scripts.with_safedirs).
sd_u=$(id -u);
sd_one() {
  sd_m=$(ls -ldnL "$1" 2>/dev/null) || return 0; at=$1; set -f; set -- $sd_m; set +f;
  case $3 in "$sd_u"|0) ;; *) why=notmine; return 1 ;; esac;
  case $1 in ?????-??-*|d????????[tT]*) return 0 ;; ?????w??-?+*) ;; ?????w??-*) sd_upg "$4" && return 0 ;; esac;
  why=writable; return 1;
};
sd_upg() {
  test "$1" = "$(id -g)" && sd_n=$(id -un) && test "$(id -gn)" = "$sd_n" &&
  sd_g=$(getent group "$1" 2>/dev/null) && case ${sd_g##*:} in ""|"$sd_n") true ;; *) false ;; esac;
};
cache_safe() {
  sd_h=$(cd "$HOME" 2>/dev/null && pwd -P) || return 0;
  sd_d=$(cd "$HOME/.cache" 2>/dev/null && pwd -P) || return 0;
  while :; do
    sd_one "$sd_d" || return 1;
    test "$sd_d" = "$sd_h" || test "$sd_d" = / && break;
    sd_d=${sd_d%/*}; sd_d=${sd_d:-/};
  done;
  sd_one "$sd_h";
};
