#!/bin/sh
# Install Debian packages when their command is missing:
#   tools/apt-install.sh COMMAND WHY PACKAGE...
# COMMAND may also be the absolute path of a program the packages install (for a package
# without a command on PATH, e.g. dovecot-lmtpd's /usr/lib/dovecot/lmtp).
# It says what it installs and why before it does, with every package apt-get will add, and
# installs no recommended packages (--no-install-recommends). As root only; otherwise it
# prints the command to run. Package maintainer scripts are kept from starting system-wide
# services (Dovecot, PostgreSQL, Prometheus): the tests run their own.
set -u
command="$1"; why="$2"; shift 2
if command -v "$command" >/dev/null 2>&1 || [ -x "/usr/sbin/$command" ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "missing $command ($why): sudo apt-get install --no-install-recommends $*" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || exit $?
echo "apt-install: $command is missing ($why); installing Debian packages: $*" >&2
# what apt-get will really install, dependencies included (a dry run)
added=$(apt-get install -s -y --no-install-recommends "$@" | sed -n 's/^Inst \([^ ]*\).*/\1/p' \
  | tr '\n' ' ')
echo "apt-install: with their dependencies, $(echo "$added" | wc -w) packages: $added" >&2
policy=${APT_INSTALL_POLICY_RC_D:-/usr/sbin/policy-rc.d}  # the variable is for tests only
guard=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod +x "$policy"
  guard=1
fi
apt-get install -y -qq --no-install-recommends "$@" >/dev/null
status=$?
[ "$guard" = 1 ] && rm -f "$policy"
exit $status
