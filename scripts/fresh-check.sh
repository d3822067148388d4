#!/usr/bin/env bash
# fresh-check: does the set-up work on a Debian 12 machine that has nothing else?
#
# The development machines have packages, headers and a Python of their own that a fresh machine
# lacks, so a missing step in scripts/bootstrap.sh hides behind them (issue 10 item 0: python3-dev
# and python3-venv were missing). This script builds a minimal Debian 12 root with mmdebstrap
# (variant minbase plus python3, git and make: what the README assumes), clones this checkout into
# it, enters it with chroot as root and runs a make target there, then checks its output:
#
#   --stage demo   (default) `make demo`; the demo notebook's table must list every instance with
#                  a boot time and the final state `terminated`, and no process may outlive it
#   --stage setup  `make setup`; the virtualenv must import cloudlab and libvirt, the image and the
#                  kernelspec must be there
#   -- CMD...      afterwards, CMD in the clone (e.g. -- .venv/bin/pytest tests/test_vm.py -x -q)
#
# Options: --ref REV clones REV instead of HEAD (e.g. --ref main to check older code; by default the
# working tree's uncommitted changes to tracked files are applied to the clone), --keep keeps the
# root in the work folder for a look, --rebuild makes a new root tarball even if one is cached.
#
# Isolation and clean-up: the chroot runs in its own mount and PID namespaces (unshare), with a
# private /run (so `ip netns` there sees only the namespaces made inside) and its own /proc. When
# the script ends for any reason -- success, failure, Ctrl-C, SIGTERM, or its own SIGKILL -- the
# namespace's init is killed (unshare --kill-child), which takes every process started inside with
# it, and with the last process the mounts and the network namespaces made inside go too. The trap
# then checks that no process has its root in the chroot and no mount is left under it, and only
# then deletes the work folder (rm --one-file-system).
#
# The root is cached as a tarball in ~/.cache/cloudlab/fresh/ (or $CLOUDLAB_CACHE/fresh), named by
# a digest of its inputs (suite, variant, packages, mmdebstrap's version, this machine's apt
# sources and apt options), so a rerun skips mmdebstrap. Downloaded .debs and pip's HTTP cache are
# kept there too (apt and pip check every file's hash); pip's cache of wheels *built here* is
# emptied before every run, so a wheel that once compiled can never hide a missing header.
#
# The chroot reaches Debian and PyPI as this machine does: the root gets this machine's apt
# sources and Acquire:: options, its local CA certificates, its pip configuration files and PIP_*
# and proxy variables (FRESH_PIP=pypi keeps only the certificates, timeouts and proxies, for PyPI
# alone), and local package folders named there are bind-mounted read-only.
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

# ------------------------------------------------------------------------------------------------
# inside: PID 1 of the new PID and mount namespaces; mounts what a booted machine has, then chroots.
if [ "${1:-}" = "--inside" ]; then
  root=$2
  shift 2
  mount -t proc proc "$root/proc"
  mount --rbind /sys "$root/sys"
  mount --make-rslave "$root/sys"
  mount --rbind /dev "$root/dev" # /dev/pts, /dev/shm, /dev/kvm, /dev/net/tun
  mount --make-rslave "$root/dev"
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run" # a fresh machine's /run: no netns of others
  mkdir -p "$root/run/lock" "$root/run/netns"
  while IFS= read -r dir; do
    [ -n "$dir" ] || continue
    mkdir -p "$root$dir"
    mount --bind -o ro "$dir" "$root$dir"
    mount -o remount,bind,ro "$root$dir"
  done <<<"${FRESH_BINDS:-}"
  while IFS= read -r pair; do
    [ -n "$pair" ] || continue
    mkdir -p "$root${pair#*=}"
    mount --bind "${pair%%=*}" "$root${pair#*=}"
  done <<<"${FRESH_CACHES:-}"
  mapfile -t envs <<<"${FRESH_ENVS:-}"
  exec chroot "$root" /usr/bin/env -i "${envs[@]}" /bin/bash /root/fresh-check-run.sh
fi

# ------------------------------------------------------------------------------------------------
# outside
stage=demo ref="" keep=0 rebuild=0 extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --stage) stage=$2; shift 2 ;;
    --ref) ref=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --rebuild) rebuild=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
case $stage in setup | demo) ;; *) die "--stage is setup or demo, not $stage" ;; esac
[ "$(id -u)" -eq 0 ] || die "needs root (mounts, chroot, and make demo runs as root there)"
for tool in mmdebstrap unshare chroot git tar; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install mmdebstrap util-linux coreutils git tar)"
done

here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here/.." rev-parse --show-toplevel)
cache=${CLOUDLAB_CACHE:-$HOME/.cache/cloudlab}/fresh
mkdir -p "$cache"

# --- this machine's way to Debian's archive: sources and the Acquire:: options ---------------------
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && grep -q '^[^#[:space:]]' "$f" && sources+=("$f")
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
  local aptconf tmp started
  aptconf=$(mktemp)
  printf '%s\n' "$aptopts" >"$aptconf"
  tmp=$cache/.building.$$.tar
  started=$SECONDS
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
  flock 9 # a concurrent check (another engineer, the test) waits for this one's tarball
  if [ "$rebuild" = 1 ] || [ ! -s "$tarball" ]; then build_root; else say "cached root: $tarball"; fi
) 9>"$cache/.lock"

# --- the work folder and the trap that leaves nothing behind --------------------------------------
work=$(mktemp -d "${FRESH_WORK:-/var/tmp}/cloudlab-fresh.XXXXXX")
root=$work/root
inner_pid=""
cleanup() {
  local status=$? pid left since=$SECONDS
  trap - EXIT INT TERM HUP
  if [ -n "$inner_pid" ] && kill -0 "$inner_pid" 2>/dev/null; then
    kill -TERM "$inner_pid" 2>/dev/null || true # unshare dies; --kill-child SIGKILLs the namespace's init
    wait "$inner_pid" 2>/dev/null || true
  fi
  # Nothing should be left (the PID namespace is gone); make sure, by the chroot's path.
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    left=""
    for pid in /proc/[0-9]*; do
      [ "$(readlink "$pid/root" 2>/dev/null)" = "$root" ] && left+=" ${pid#/proc/}"
    done
    [ -z "$left" ] && break
    say "killing processes left in the chroot:$left"
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
    sleep 0.5
  done
  if grep -qF " $root" /proc/self/mountinfo; then
    say "unmounting what is left under $root"
    grep -F " $root" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l || true
  fi
  if grep -qF " $root" /proc/self/mountinfo; then
    say "mounts are still under $root; not deleting $work"
  elif [ "$keep" = 1 ]; then
    say "kept the root in $root"
  else
    rm -rf --one-file-system "$work"
  fi
  say "cleaned up in $((SECONDS - since)) s; $SECONDS s in all"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

started=$SECONDS
mkdir -p "$root"
tar -C "$root" --numeric-owner -xpf "$tarball"
say "root unpacked in $((SECONDS - started)) s"

# --- what a machine on this network has: name service, CA certificates, pip configuration ----------
rm -f "$root/etc/resolv.conf"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
[ -s "$root/etc/hosts" ] || printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
if [ -d /usr/local/share/ca-certificates ]; then
  # Local CAs go where update-ca-certificates finds them, so installing ca-certificates in the
  # chroot later keeps them; the bundle is copied too, since minbase has no ca-certificates.
  mkdir -p "$root/usr/local/share/ca-certificates" "$root/etc/ssl/certs"
  cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"

pip_mode=${FRESH_PIP:-host}
envs=(HOME=/root USER=root LOGNAME=root "PATH=$CHROOT_PATH" LANG=C.UTF-8 TERM="${TERM:-dumb}" DEBIAN_FRONTEND=noninteractive)
while IFS='=' read -r name value; do
  case $name in
    PIP_CERT | PIP_DEFAULT_TIMEOUT | PIP_DISABLE_PIP_VERSION_CHECK | PIP_RETRIES | [a-z]*_proxy | [A-Z]*_PROXY | SSL_CERT_FILE | SSL_CERT_DIR | REQUESTS_CA_BUNDLE | CURL_CA_BUNDLE)
      envs+=("$name=$value") ;;
    PIP_*) [ "$pip_mode" = host ] && envs+=("$name=$value") ;;
  esac
done < <(env)
binds=""
if [ "$pip_mode" = host ]; then
  pip_files=()
  for f in /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf" ${PIP_CONFIG_FILE:-}; do
    [ -f "$f" ] && pip_files+=("$f")
  done
  for f in "${pip_files[@]}" /etc/xdg/pip/*; do
    [ -f "$f" ] || continue
    target=$root${f/#$HOME//root}
    mkdir -p "$(dirname "$target")"
    cp -L "$f" "$target"
  done
  # Local folders the configuration names (find-links, file:// indexes) are bind-mounted read-only.
  for path in $({ cat "${pip_files[@]}" 2>/dev/null; env | grep '^PIP_'; } | grep -oE '(file://)?/[^[:space:]"'"'"',]+'); do
    path=${path#file://}
    while [ -n "$path" ] && [ ! -e "$path" ]; do path=${path%/*}; done
    [ -d "$path" ] || path=$(dirname "$path")
    [ "${path##*/}" = simple ] && path=$(dirname "$path") # an index's pages link to ../files
    case $path in "" | / | /etc* | /root | "$HOME" | /usr*) continue ;; esac
    case $'\n'$binds in *$'\n'$path$'\n'*) continue ;; esac
    binds+="$path"$'\n'
  done
fi

# Download caches: apt's .debs and pip's HTTP cache survive runs; pip's wheels built here do not.
caches="$cache/apt-archives=/var/cache/apt/archives"$'\n'"$cache/pip=/root/.cache/pip"$'\n'
mkdir -p "$cache/apt-archives/partial" "$cache/pip"
rm -rf "$cache/pip/wheels"
if [ -n "${FRESH_NO_DOWNLOAD_CACHE:-}" ]; then caches=""; fi

# --- the checkout, as a clone ---------------------------------------------------------------------
started=$SECONDS
git clone --quiet --no-hardlinks "$repo" "$root$CLONE"
if [ -n "$ref" ]; then
  git -C "$root$CLONE" checkout --quiet --detach "$(git -C "$repo" rev-parse --verify "$ref^{commit}")"
  say "clone at $ref ($(git -C "$root$CLONE" log -1 --format='%h %s'))"
else
  git -C "$root$CLONE" checkout --quiet --detach "$(git -C "$repo" rev-parse HEAD)"
  if ! git -C "$repo" diff --quiet HEAD; then
    git -C "$repo" diff --binary HEAD | git -C "$root$CLONE" apply --whitespace=nowarn
    say "clone at HEAD plus the working tree's uncommitted changes to tracked files"
  else
    say "clone at HEAD ($(git -C "$root$CLONE" log -1 --format='%h %s'))"
  fi
fi
say "cloned in $((SECONDS - started)) s"

# The run inside, as a script in the root's home (bash, coreutils: all minbase has).
{
  echo 'set -uo pipefail'
  echo "cd $CLONE"
  # Lines of the set-up's own ([setup]) and this check's get the seconds since the start.
  echo 'stamp() { local line; while IFS= read -r line; do case $line in "["*) printf "%4ds %s\n" "$SECONDS" "$line" ;; *) printf "%s\n" "$line" ;; esac; done; }'
  case $stage in
    setup) echo '{ make setup && .venv/bin/python -c "import cloudlab, libvirt; print(\"[fresh-check] .venv imports cloudlab and libvirt\", libvirt.getVersion())" && test -f .venv/share/jupyter/kernels/cloudlab/kernel.json; } 2>&1 | stamp' ;;
    # --port 0: the chroot shares this machine's network, where another cloud may hold 8773.
    demo) echo 'make demo UP_ARGS="--port 0" 2>&1 | stamp' ;;
  esac
  echo 'status=$?'
  echo "[ \$status -eq 0 ] && echo '[fresh-check] make $stage passed in the chroot'"
  if [ ${#extra[@]} -gt 0 ]; then
    printf '[ $status -eq 0 ] && { %s; status=$?; }\n' "$(printf '%q ' "${extra[@]}")"
  fi
  cat <<'EOS'
# Processes that outlive the run (a cloud `down` did not stop) are named, and fail it.
left=""
for p in /proc/[0-9]*; do
  pid=${p#/proc/}
  [ "$pid" = 1 ] || [ "$pid" = $$ ] || [ ! -r "$p/cmdline" ] && continue
  left+="  $pid $(tr '\0' ' ' <"$p/cmdline")"$'\n'
done
if [ -n "$left" ]; then
  echo "[fresh-check] processes left running in the chroot:"
  printf '%s' "$left"
  [ $status -ne 0 ] || status=97
fi
exit $status
EOS
} >"$root/root/fresh-check-run.sh"

say "entering the chroot (as root, Debian's /usr/bin/python3): make $stage${extra[*]:+, then ${extra[*]}}"
started=$SECONDS
FRESH_BINDS=$binds FRESH_CACHES=$caches FRESH_ENVS=$(printf '%s\n' "${envs[@]}") \
  unshare --mount --pid --fork --kill-child --propagation private -- "$0" --inside "$root" &
inner_pid=$!
status=0
wait "$inner_pid" || status=$?
inner_pid=""
say "chroot finished with status $status after $((SECONDS - started)) s"
[ "$status" -eq 0 ] || die "the run in the chroot failed (status $status); its output is above"

if [ "$stage" = demo ]; then
  python3 "$here/check-demo-output.py" "$root$CLONE/results/demo.ipynb" || die "make demo's output is wrong"
fi
if [ "$stage" = setup ]; then
  [ -d "$root/root/.cache/cloudlab/images/default" ] || die "make setup left no default image"
fi
say "PASS ($stage)"
