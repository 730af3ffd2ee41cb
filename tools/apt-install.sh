#!/bin/sh
# Install Debian packages when their command is missing: tools/apt-install.sh COMMAND PACKAGE...
# As root only (otherwise it says what to install). Package maintainer scripts are kept from
# starting system-wide services (Dovecot, blackbox_exporter): the tests run their own.
set -u
command="$1"; shift
if command -v "$command" >/dev/null 2>&1 || [ -x "/usr/sbin/$command" ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "missing $command: sudo apt-get install $*" >&2
  exit 0
fi
guard=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  guard=1
fi
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
status=$?
[ "$guard" = 1 ] && rm -f /usr/sbin/policy-rc.d
exit $status
