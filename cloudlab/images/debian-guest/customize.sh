#!/bin/sh
# The cloudlab-debian image's changes to a stock Debian root, run on the build host by mmdebstrap's
# hooks:  customize.sh essential ROOT  (essential packages are in, the rest not yet)
#         customize.sh customize ROOT  (every package is installed and configured)
# Only configuration is added: every program in the image comes from a Debian package, unchanged.
set -eu
phase=$1
root=$2
here=$(cd "$(dirname "$0")" && pwd)

# Copy an overlay folder onto the root: owned by root, modes as in the source tree.
overlay() {
    (cd "$1" && find . -type d) | while read -r dir; do mkdir -p "$root/$dir"; done
    (cd "$1" && find . -type f) | while read -r file; do
        install -o root -g root -m "$(stat -c %a "$1/$file")" "$1/$file" "$root/$file"
    done
}

case "$phase" in
essential)
    # tiny-initramfs' settings must be in place before the kernel's postinst makes the initrd.
    overlay "$here/early"
    ;;
customize)
    overlay "$here/rootfs"
    chmod 0755 "$root"/usr/lib/cloudlab/*  # programs, whatever modes the installed package kept
    chroot "$root" systemctl enable --quiet systemd-networkd.service cloudlab-identity.service \
        cloudlab-boot-marker.service
    # Background jobs an experiment does not want running under its measurements: apt's daily
    # update/upgrade (instances reach no archive anyway) and e2scrub (for LVM snapshots; there is no
    # LVM). They stay installed: "systemctl enable" brings them back.
    chroot "$root" systemctl disable --quiet apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
        e2scrub_reap.service
    # Nothing that must be unique per instance ships in the image: SSH host keys (cloud-init makes
    # them at an instance's first boot), the machine id (an empty file: systemd makes one at boot,
    # without "first boot" prompts), the random seed, the build host's name and resolver.
    rm -f "$root"/etc/ssh/ssh_host_*_key "$root"/etc/ssh/ssh_host_*_key.pub
    : >"$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id" "$root/var/lib/systemd/random-seed"
    echo localhost >"$root/etc/hostname"
    printf '# cloudlab: no resolver is configured (instances reach addresses, not names)\n' >"$root/etc/resolv.conf"
    # cloud-init has never run in this root (mmdebstrap does not boot it), but be sure.
    rm -rf "$root/var/lib/cloud" "$root/var/log/cloud-init.log" "$root/var/log/cloud-init-output.log"
    ;;
*)
    echo "usage: customize.sh essential|customize ROOT" >&2
    exit 2
    ;;
esac
