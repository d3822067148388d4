#!/usr/bin/env bash
# fresh-check: does the set-up work on a Debian 12 machine that has nothing else?
#
# The development machines have packages, headers and a Python of their own that a fresh machine
# lacks, so a missing step in scripts/bootstrap.sh hides behind them (issue 10 item 0: python3-venv
# and python3-dev were missing). This builds a minimal Debian 12 root with mmdebstrap (variant
# minbase plus python3, git and make: what the README assumes), clones this checkout into it,
# enters it with chroot as root -- where python3 is Debian's /usr/bin/python3 -- runs a make target
# there and checks its output:
#
#   --stage demo   (default) `make demo`; the demo notebook's table must list every instance with
#                  an instance id, a node, a boot time and the final state `terminated`
#   --stage setup  `make setup`; the virtualenv must import cloudlab and libvirt, the default image
#                  and the kernelspec must be there
#   -- CMD...      then CMD in the clone, e.g. -- .venv/bin/pytest tests/test_vm.py -x -q
#
# A process still running in the chroot when the run ends (a cloud `down` did not stop) fails it.
#
# Options: --ref REV clones REV instead of HEAD (e.g. --ref main, to see older code fail); without
# it the working tree's uncommitted changes to tracked files are applied to the clone of HEAD.
# --keep keeps the root on disk in the work folder for a look. --rebuild makes a new root tarball.
# Environment: FRESH_MEDIUM=tmpfs|disk (default: tmpfs when 10 GiB of memory are free; the root is
# 3 GB after `make setup`), FRESH_WORK=DIR for the work folder on disk (/var/tmp),
# FRESH_PIP=host|pypi, FRESH_NO_DOWNLOAD_CACHE=1 for a run that downloads everything again.
#
# Isolation and clean-up: the run is PID 1 of its own mount and PID namespaces (unshare). The root
# is a tmpfs or bind mount there, with its own /proc, /sys and /dev bound from this machine, and a
# private tmpfs /run, so `ip netns` inside sees only the namespaces made inside. When the script
# ends for any reason -- success, failure, Ctrl-C, SIGTERM, SIGKILL -- unshare dies with it
# (setpriv --pdeathsig), the namespaces' init with unshare (--kill-child), the kernel kills every
# process started inside, and with the last one the mounts, the tmpfs and the network namespaces
# made inside are gone. The trap then checks that no
# process has its root in the chroot and no mount is left under it before it deletes the work
# folder (rm --one-file-system). Work folders of earlier runs that were killed are swept.
#
# Caches, in ~/.cache/cloudlab/fresh/ (or $CLOUDLAB_CACHE/fresh): the root tarball, named by a
# digest of its inputs (suite, variant, packages, mmdebstrap's version, this machine's apt sources
# and Acquire:: options), so a rerun skips mmdebstrap; the downloaded .debs and pip's HTTP cache
# (apt and pip check every file's hash). pip's cache of wheels it *built* stays in the root, so a
# wheel that compiled once can never hide a missing header.
#
# The chroot reaches Debian and PyPI as this machine does: the root has this machine's apt sources
# and Acquire:: options, its local CA certificates and bundle, its pip configuration files and
# PIP_* and proxy variables; local package folders they name are bind-mounted read-only.
# FRESH_PIP=pypi keeps only the certificates, timeouts and proxies: PyPI alone.
set -euo pipefail

SUITE=bookworm
VARIANT=minbase
INCLUDE=python3,git,make
ROOT_FORMAT=1 # bump when the way the root is made changes
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CLONE=/root/cloudlab

say() { printf '[fresh-check] %s\n' "$*" >&2; }
die() {
  say "FAIL: $*"
  exit 1
}

# ================================================================================================
# inside: PID 1 of the new mount and PID namespaces. Everything it mounts dies with it.

copy_network_config() { # what a machine on this network has: name service, CAs, pip's settings
  local root=$1 f path target
  rm -f "$root/etc/resolv.conf"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  [ -s "$root/etc/hosts" ] || printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
  # Local CAs where update-ca-certificates finds them (so installing ca-certificates later keeps
  # them), and the bundle itself, which minbase has no package to make.
  if [ -d /usr/local/share/ca-certificates ]; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
  fi
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$root/etc/ssl/certs"
    cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  fi
  [ "${FRESH_PIP:-host}" = host ] || return 0
  pip_files=()
  for f in /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf" ${PIP_CONFIG_FILE:-}; do
    if [ -f "$f" ]; then pip_files+=("$f"); fi
  done
  for f in "${pip_files[@]}" /etc/xdg/pip/*; do
    [ -f "$f" ] || continue
    target=$root${f/#$HOME//root}
    mkdir -p "$(dirname "$target")"
    cp -L "$f" "$target"
  done
  # Local folders named there or in PIP_* (find-links, file:// indexes), read-only.
  for path in $({ cat "${pip_files[@]}" /dev/null; env | grep '^PIP_' || true; } | grep -oE '(file://)?/[^[:space:]"'"'"',]+' || true); do
    path=${path#file://}
    while [ -n "$path" ] && [ ! -e "$path" ]; do path=${path%/*}; done
    [ -d "$path" ] || path=$(dirname "$path")
    if [ "${path##*/}" = simple ]; then path=$(dirname "$path"); fi # an index's pages link to ../files
    case $path in "" | / | /etc* | /root | "$HOME" | /usr*) continue ;; esac
    mountpoint -q "$root$path" && continue
    mkdir -p "$root$path"
    mount --bind "$path" "$root$path"
    mount -o remount,bind,ro "$root$path"
  done
}

chroot_env() { # a login's environment, plus how this machine reaches the registries
  local name value
  envs=(HOME=/root USER=root LOGNAME=root "PATH=$CHROOT_PATH" LANG=C.UTF-8 "TERM=${TERM:-dumb}")
  while IFS='=' read -r name value; do
    case $name in
      PIP_CERT | PIP_DEFAULT_TIMEOUT | PIP_DISABLE_PIP_VERSION_CHECK | PIP_RETRIES | [a-z]*_proxy | [A-Z]*_PROXY | \
        SSL_CERT_FILE | SSL_CERT_DIR | REQUESTS_CA_BUNDLE | CURL_CA_BUNDLE)
        envs+=("$name=$value") ;;
      PIP_*) if [ "${FRESH_PIP:-host}" = host ]; then envs+=("$name=$value"); fi ;;
    esac
  done < <(env)
}

write_run_script() { # the run inside, as a script in the root's home: bash and coreutils only
  local root=$1
  {
    echo 'set -uo pipefail'
    echo "cd $CLONE"
    # Lines of the set-up's own ([setup]) and of this check get the seconds since the start.
    echo 'stamp() { local line; while IFS= read -r line; do case $line in "["*) printf "%4ds %s\n" "$SECONDS" "$line" ;; *) printf "%s\n" "$line" ;; esac; done; }'
    case $FRESH_STAGE in
      setup)
        echo '{ make setup && .venv/bin/python -c "import cloudlab, libvirt; print(\"[fresh-check] .venv imports cloudlab and libvirt\", libvirt.getVersion())" \'
        echo '  && test -f .venv/share/jupyter/kernels/cloudlab/kernel.json && test -f ~/.cache/cloudlab/images/default/manifest.json; } 2>&1 | stamp'
        ;;
      # --port 0: the chroot shares this machine's network, where another cloud may hold 8773.
      demo) echo 'make demo UP_ARGS="--port 0" 2>&1 | stamp' ;;
    esac
    echo 'status=$?'
    echo "[ \$status -eq 0 ] && echo '[fresh-check] make $FRESH_STAGE passed in the chroot'"
    [ -z "${FRESH_EXTRA:-}" ] || printf '[ $status -eq 0 ] && { %s; status=$?; }\n' "$FRESH_EXTRA"
    cat <<'EOS'
left=""
for p in /proc/[0-9]*; do
  pid=${p#/proc/}
  [ "$pid" = 1 ] || [ "$pid" = $$ ] || [ ! -r "$p/cmdline" ] && continue
  args=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
  [ -n "$args" ] && left+="  $pid $args"$'\n'
done
if [ -n "$left" ]; then
  echo "[fresh-check] processes left running in the chroot:"
  printf '%s' "$left"
  [ $status -ne 0 ] || status=97
fi
exit $status
EOS
  } >"$root/root/fresh-check-run.sh"
}

clone_checkout() {
  local root=$1
  git clone --quiet --no-hardlinks "$FRESH_REPO" "$root$CLONE"
  if [ -n "${FRESH_REF:-}" ]; then
    git -C "$root$CLONE" checkout --quiet --detach "$(git -C "$FRESH_REPO" rev-parse --verify "$FRESH_REF^{commit}")"
    say "clone at $FRESH_REF: $(git -C "$root$CLONE" log -1 --format='%h %s')"
  else
    git -C "$root$CLONE" checkout --quiet --detach "$(git -C "$FRESH_REPO" rev-parse HEAD)"
    if ! git -C "$FRESH_REPO" diff --quiet HEAD; then
      git -C "$FRESH_REPO" diff --binary HEAD | git -C "$root$CLONE" apply --whitespace=nowarn
      say "clone at HEAD plus the working tree's uncommitted changes to tracked files"
    else
      say "clone at HEAD: $(git -C "$root$CLONE" log -1 --format='%h %s')"
    fi
  fi
}

inside() {
  local root=$FRESH_ROOT archives=$FRESH_CACHE/apt-archives started status=0 f
  started=$SECONDS
  if [ "$FRESH_MEDIUM" = tmpfs ]; then
    mount -t tmpfs -o size=10g,mode=0755 cloudlab-fresh "$root"
  else
    mount --bind "$root" "$root" # a mount point, as / is: `ip -n NS` fails with EINVAL otherwise
  fi
  tar -C "$root" --numeric-owner -xpf "$FRESH_TARBALL"
  copy_network_config "$root"
  clone_checkout "$root"
  write_run_script "$root"
  if [ -z "${FRESH_NO_DOWNLOAD_CACHE:-}" ]; then
    # Copies (links on one file system), so concurrent checks never share apt's lock.
    mkdir -p "$archives" "$FRESH_CACHE/pip/http" "$FRESH_CACHE/pip/http-v2" "$root/root/.cache/pip/http" "$root/root/.cache/pip/http-v2"
    find "$archives" -maxdepth 1 -name '*.deb' -exec cp -l -t "$root/var/cache/apt/archives" {} + 2>/dev/null ||
      find "$archives" -maxdepth 1 -name '*.deb' -exec cp -t "$root/var/cache/apt/archives" {} +
    mount --bind "$FRESH_CACHE/pip/http" "$root/root/.cache/pip/http"
    mount --bind "$FRESH_CACHE/pip/http-v2" "$root/root/.cache/pip/http-v2"
  fi
  mount -t proc proc "$root/proc"
  mount --rbind /sys "$root/sys"
  mount --make-rslave "$root/sys"
  mount --rbind /dev "$root/dev" # /dev/pts, /dev/shm, /dev/kvm, /dev/net/tun
  mount --make-rslave "$root/dev"
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run" # a machine's fresh /run: no netns of others'
  mkdir -p "$root/run/lock" "$root/run/netns"
  say "root ready ($FRESH_MEDIUM) in $((SECONDS - started)) s"

  chroot_env
  say "entering the chroot (as root, Debian's python3): make $FRESH_STAGE${FRESH_EXTRA:+, then $FRESH_EXTRA}"
  started=$SECONDS
  chroot "$root" /usr/bin/env -i "${envs[@]}" /bin/bash /root/fresh-check-run.sh || status=$?
  say "chroot finished with status $status after $((SECONDS - started)) s"

  if [ -z "${FRESH_NO_DOWNLOAD_CACHE:-}" ]; then
    for f in "$root"/var/cache/apt/archives/*.deb; do
      if [ -e "$f" ] && [ ! -e "$archives/${f##*/}" ]; then
        cp "$f" "$archives/.${f##*/}.tmp" && mv "$archives/.${f##*/}.tmp" "$archives/${f##*/}"
      fi
    done
  fi
  [ "$status" -eq 0 ] || die "the run in the chroot failed (status $status); its output is above"
  if [ "$FRESH_STAGE" = demo ]; then
    python3 "$FRESH_HERE/check-demo-output.py" "$root$CLONE/results/demo.ipynb" || die "make demo's output is wrong"
  fi
  say "PASS ($FRESH_STAGE)"
}

if [ "${1:-}" = "--inside" ]; then
  inside
  exit 0
fi

# ================================================================================================
# outside
stage=demo ref="" keep=0 rebuild=0 extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --stage) stage=${2:-}; shift 2 || die "--stage needs setup or demo" ;;
    --ref) ref=${2:-}; shift 2 || die "--ref needs a revision" ;;
    --keep) keep=1; shift ;;
    --rebuild) rebuild=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
case $stage in setup | demo) ;; *) die "--stage is setup or demo, not $stage" ;; esac
[ "$(id -u)" -eq 0 ] || die "needs root (mounts, chroot, and the set-up runs as root there)"
for tool in mmdebstrap unshare setpriv chroot mountpoint flock git tar; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install mmdebstrap util-linux git tar)"
done

here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here/.." rev-parse --show-toplevel)
[ -z "$ref" ] || git -C "$repo" rev-parse --verify --quiet "$ref^{commit}" >/dev/null || die "--ref $ref is no commit"
cache=${CLOUDLAB_CACHE:-$HOME/.cache/cloudlab}/fresh
mkdir -p "$cache"
started_all=$SECONDS

# --- the root tarball: this machine's way to Debian's archive is part of its key -----------------
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  if [ -f "$f" ] && grep -q '^[^#[:space:]]' "$f"; then sources+=("$f"); fi
done
[ ${#sources[@]} -gt 0 ] || die "this machine has no apt sources to copy (/etc/apt/sources.list*)"
aptopts=$(cat /etc/apt/apt.conf /etc/apt/apt.conf.d/* 2>/dev/null | grep -E '^[[:space:]]*Acquire::' || true)
key=$(
  {
    echo "format=$ROOT_FORMAT suite=$SUITE variant=$VARIANT include=$INCLUDE"
    mmdebstrap --version
    for f in "${sources[@]}"; do echo "== $f" && cat "$f"; done
    echo "== aptopts" && echo "$aptopts"
  } | sha256sum | cut -c1-16
)
tarball=$cache/debian12-$VARIANT-$key.tar

build_root() {
  local aptconf tmp started=$SECONDS
  aptconf=$(mktemp)
  printf '%s\n' "$aptopts" >"$aptconf"
  tmp=$cache/.building.$$.tar
  say "building a $SUITE $VARIANT root with $INCLUDE (mmdebstrap; about a minute)"
  if ! mmdebstrap --quiet --variant="$VARIANT" --include="$INCLUDE" --aptopt="$aptconf" \
    "$SUITE" "$tmp" "${sources[@]}"; then
    rm -f "$aptconf" "$tmp"
    die "mmdebstrap failed"
  fi
  rm -f "$aptconf"
  mv "$tmp" "$tarball"
  find "$cache" -maxdepth 1 -name "debian12-*.tar" ! -path "$tarball" -delete
  say "root tarball ready in $((SECONDS - started)) s: $tarball ($(du -h "$tarball" | cut -f1))"
}
(
  flock 9 # a concurrent check (another engineer's, the test's) waits for this one's tarball
  if [ "$rebuild" = 1 ] || [ ! -s "$tarball" ]; then build_root; else say "cached root: $tarball"; fi
) 9>"$cache/.lock"

# --- where the root lives --------------------------------------------------------------------------
medium=${FRESH_MEDIUM:-}
if [ "$keep" = 1 ]; then
  medium=disk
elif [ -z "$medium" ]; then
  free_kib=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
  if [ "${free_kib:-0}" -ge $((10 * 1024 * 1024)) ]; then medium=tmpfs; else medium=disk; fi
fi
case $medium in tmpfs | disk) ;; *) die "FRESH_MEDIUM is tmpfs or disk, not $medium" ;; esac
workdir=${FRESH_WORK:-/var/tmp}
for old in "$workdir"/cloudlab-fresh.*; do # left by a run that was killed (SIGKILL runs no trap)
  [ -f "$old/pid" ] || continue
  kill -0 "$(cat "$old/pid")" 2>/dev/null && continue
  grep -qF " $old/" /proc/self/mountinfo && continue
  say "removing $old, left by a run that was killed"
  rm -rf --one-file-system "$old"
done
for old in "$cache"/.building.*.tar; do # a tarball half made by a run that was killed
  pid=${old##*/.building.}
  if [ -e "$old" ] && ! kill -0 "${pid%.tar}" 2>/dev/null; then rm -f "$old"; fi
done
work=$(mktemp -d "$workdir/cloudlab-fresh.XXXXXX")
echo $$ >"$work/pid"
root=$work/root
mkdir "$root"

inner_pid=""
cleanup() {
  local status=$? pid left since=$SECONDS
  set +e # every step of the clean-up runs, whatever the one before it said
  trap - EXIT
  trap '' INT TERM HUP # a second Ctrl-C must not cut the clean-up short
  if [ -n "$inner_pid" ] && kill -0 "$inner_pid" 2>/dev/null; then
    # unshare ignores SIGTERM and SIGINT (it leaves them to its child); SIGKILL, and --kill-child
    # takes the namespaces' init with it, and the kernel everything inside.
    kill -KILL "$inner_pid" 2>/dev/null || true
    wait "$inner_pid" 2>/dev/null || true
  fi
  # Nothing should be left once the kernel has emptied the PID namespace (it takes a moment after
  # unshare's SIGKILL). Make sure, by the chroot's path; after 2 s, kill what is still there.
  for try in $(seq 1 50); do
    left=$(find /proc -mindepth 2 -maxdepth 2 -name root \( -lname "$root" -o -lname "$root/*" \) 2>/dev/null |
      cut -d/ -f3 | tr '\n' ' ') # (find: no access to some other namespaces' roots)
    [ -z "${left// /}" ] && break
    if [ "$try" -ge 10 ]; then
      say "killing processes left in the chroot: $left"
      # shellcheck disable=SC2086
      kill -KILL $left 2>/dev/null
    fi
    sleep 0.2
  done
  if grep -qF " $root" /proc/self/mountinfo; then
    say "unmounting what is left under $root"
    grep -F " $root" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l || true
  fi
  if grep -qF " $root" /proc/self/mountinfo; then
    say "mounts are still under $root; not deleting $work"
  elif [ "$keep" = 1 ]; then
    rm -f "$work/pid"
    say "kept the root in $root"
  else
    rm -rf --one-file-system "$work"
  fi
  say "cleaned up in $((SECONDS - since)) s; $((SECONDS - started_all)) s in all"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

export FRESH_ROOT=$root FRESH_MEDIUM=$medium FRESH_TARBALL=$tarball FRESH_CACHE=$cache FRESH_REPO=$repo \
  FRESH_REF=$ref FRESH_STAGE=$stage FRESH_HERE=$here FRESH_EXTRA=""
[ ${#extra[@]} -eq 0 ] || FRESH_EXTRA=$(printf '%q ' "${extra[@]}")
# setpriv --pdeathsig: unshare dies with this script even when it is SIGKILLed and runs no trap;
# unshare --kill-child then takes the namespaces' init, and the kernel everything inside.
setpriv --pdeathsig KILL unshare --mount --pid --fork --kill-child --propagation private -- \
  bash "$here/fresh-check.sh" --inside &
inner_pid=$!
status=0
wait "$inner_pid" || status=$?
inner_pid=""
exit "$status"
