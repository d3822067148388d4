#!/bin/sh
# /init of cloudlab's default image: PID 1 of a guest that lives in its initramfs.
#
# It mounts the kernel filesystems, loads the virtio and power-button modules, brings the NICs up,
# starts acpid and dropbear, prints ONE boot-marker line on the console, then waits for a shutdown
# request. Tools watch the serial console for the marker ("cloudlab-boot: ok host=... uptime=...").
#
# Shutdown is always clean and always goes through PID 1:
#   ACPI power button (libvirt's virDomainShutdown, QEMU's system_powerdown)
#       -> kernel "button" driver -> /dev/input/event* (evdev) -> busybox acpid
#       -> /etc/acpi/power-button -> busybox `poweroff`
#   `poweroff` / `halt` inside the guest -> SIGUSR2 / SIGUSR1 to PID 1 -> power off
#   `reboot` -> SIGTERM to PID 1, Ctrl-Alt-Del -> SIGINT to PID 1 -> reboot
# PID 1 traps these, prints "cloudlab-shutdown: ...", stops daemons, syncs and powers off (QEMU
# then exits) or reboots. A halted-but-running VM is useless in a cloud, so halt also powers off.
#
# Kernel command line options read here:
#   cloudlab.hostname=NAME      hostname (default "cloudlab")
#   cloudlab.ip=ADDR/PREFIX[,GATEWAY]   static address on the first NIC (DHCP/metadata come later)
#   cloudlab.shell=1            a root shell on ttyS0 after the marker (debugging, tests)

export PATH=/sbin:/usr/sbin:/bin:/usr/bin
export HOME=/root

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run

say() { echo "$*" >/dev/console; }

# Modules in dependency order, as the image builder listed them (built-in ones are not listed).
release=$(uname -r)
while read -r module; do
    [ -n "$module" ] || continue
    insmod "/lib/modules/$release/$module" 2>/dev/null || say "cloudlab-init: cannot load $module"
done </etc/cloudlab/modules

host=cloudlab
ip_config=
shell=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        cloudlab.hostname=*) host=${arg#*=} ;;
        cloudlab.ip=*) ip_config=${arg#*=} ;;
        cloudlab.shell=1) shell=1 ;;
    esac
done
hostname "$host"
echo "$host" >/etc/hostname
echo "127.0.1.1 $host" >>/etc/hosts

# Network: every interface up; addressing beyond a static cloudlab.ip= is a later stage's job.
ip link set lo up
first_nic=
for dev in /sys/class/net/*; do
    nic=${dev##*/}
    [ "$nic" = lo ] && continue
    [ -n "$first_nic" ] || first_nic=$nic
    ip link set "$nic" up
done
if [ -n "$ip_config" ] && [ -n "$first_nic" ]; then
    ip addr add "${ip_config%%,*}" dev "$first_nic"
    case "$ip_config" in *,*) ip route add default via "${ip_config#*,}" dev "$first_nic" ;; esac
fi

# Power button -> acpid (reads /dev/input/event*, runs /etc/acpi/power-button).
acpid -c /etc/acpi -a /etc/acpid.conf -l /run/acpid.log -p /run/acpid.pid

# SSH: host keys are made on the first connection (-R), so nothing here delays the marker.
dropbear -R -p 22 -P /run/dropbear.pid 2>/dev/null &

read -r uptime _ </proc/uptime
say "cloudlab-boot: ok host=$host uptime=$uptime"

stop_guest() {
    action=$1
    read -r uptime _ </proc/uptime
    say "cloudlab-shutdown: $action host=$host uptime=$uptime"
    for pidfile in /run/dropbear.pid /run/acpid.pid; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
    done
    sync
    "$action" -f
    echo o >/proc/sysrq-trigger  # only reached if the reboot syscall failed
}
trap 'stop_guest poweroff' USR1 USR2
trap 'stop_guest reboot' TERM INT

if [ -n "$shell" ]; then
    (while :; do setsid -c sh -l </dev/ttyS0 >/dev/ttyS0 2>&1; done) &
fi

# PID 1 must never exit. `wait` returns as soon as a trapped signal arrives, and while waiting the
# shell reaps any orphaned process the kernel hands to PID 1.
while :; do
    sleep 86400 &
    wait $!
done
