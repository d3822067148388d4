#!/usr/bin/env bash
# One idempotent set-up for every make target: Debian packages, the libvirt-qemu user, the
# virtualenv with cloudlab installed, the default and Debian images (cached), the KVM probe (cached)
# and the Jupyter kernelspec. A second run with nothing to do takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '[setup] %s\n' "$*"; }

# python3-venv and python3-dev: Debian's python3 has no ensurepip without the first, and
# libvirt-python (sdist only on PyPI) is compiled against the second's Python.h.
# mmdebstrap: scripts/fresh-check.sh (make fresh-check, tests/test_fresh_machine.py) builds a bare root.
# procps: the tests run ps (a bare root has it only through chromium's dependencies).
APT_PACKAGES=(
  python3-venv python3-dev mmdebstrap procps
  qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
  pkg-config gcc vde2 vdeplug iproute2 openssh-client iperf3 busybox-static dropbear-bin nftables dnsmasq-base cpio zstd xz-utils
  e2fsprogs
  chromium chromium-driver
  s3cmd rclone
)
PYTHON=${PYTHON:-python3}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    echo "[setup] error: '$*' needs root: run this as root, or apt-get install sudo" >&2
    exit 1
  fi
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]; then
  say "refreshing apt's package lists (the image build resolves package versions from them)"
  as_root apt-get update -q
fi

# libvirt's embedded QEMU driver refuses to start without this user and group.
getent group libvirt-qemu >/dev/null || as_root groupadd --system libvirt-qemu
id libvirt-qemu >/dev/null 2>&1 || as_root useradd --system --no-create-home --gid libvirt-qemu \
  --shell /usr/sbin/nologin libvirt-qemu

# A venv whose creation failed (no ensurepip) has a python but no pip: make it again.
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  say "creating the virtualenv .venv"
  "$PYTHON" -m venv --clear .venv
fi
stamp=.venv/.cloudlab-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c 'import cloudlab' 2>/dev/null; then
  say "installing cloudlab and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi

say "default image"
.venv/bin/cloudlab image build --quiet
say "Debian image (cloudlab-debian; the first build installs ~235 packages with mmdebstrap)"
.venv/bin/cloudlab image build debian --quiet
.venv/bin/cloudlab accel --quiet

kernel_dir=.venv/share/jupyter/kernels/cloudlab
if ! cmp -s kernels/cloudlab/kernel.json "$kernel_dir/kernel.json" 2>/dev/null; then
  say "installing the Jupyter kernelspec 'cloudlab'"
  .venv/bin/jupyter kernelspec install kernels/cloudlab --sys-prefix --name cloudlab >/dev/null
fi
say "ready"
