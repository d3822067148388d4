#!/bin/sh
# /init of cloudlab's default image: PID 1 of a guest that lives in its initramfs.
#
# It mounts the kernel filesystems, loads the virtio and power-button modules, brings the NICs up,
# starts acpid and dropbear, prints ONE boot-marker line on the console, then waits for a shutdown
# request. Tools watch the serial console for the marker ("cloudlab-boot: ok host=... uptime=...").
#
# With a gateway (cloudlab.ip=ADDR/PREFIX,GATEWAY) it then asks the EC2 metadata service at
# 169.254.169.254 (reached through the default route) for the instance id, the key pair's public key
# (-> /root/.ssh/authorized_keys, which dropbear reads) and the user data (-> /run/cloudlab/user-data;
# a "#!" script runs in the background once the marker is out, output in /var/log/user-data.log,
# then a console line "cloudlab-user-data: exit=N"). It prints "cloudlab-metadata: instance-id=...
# key=yes|no user-data=yes|no" (or "cloudlab-metadata: unreachable") before the marker, and the
# marker waits for dropbear to listen, so it still means "ready for SSH". A cloud without a metadata
# service costs at most ~6 s of boot (cloudlab.metadata=0 skips the requests).
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
#   cloudlab.ip=ADDR/PREFIX[,GATEWAY]   static address on the first NIC (+ default route, metadata)
#   cloudlab.shell=1            a root shell on ttyS0 after the marker (debugging, tests)
#   cloudlab.sshkey=BASE64      base64 of an OpenSSH public key line, added to root's authorized_keys
#                               (VMs without a metadata service; the kernel command line holds 2048
#                               bytes, so an ed25519 key (~140 base64 chars) or RSA-2048 (~540) fits)
#   cloudlab.metadata=0         do not ask the metadata service (benchmarks without one boot faster)
#   cloudlab.identity=channel   a booted template (cloudlab/nc/templates.py): stop before anything that
#                               makes this guest someone (hostname, MAC, address, SSH, RNG, clock) and
#                               wait for one line of identity on the virtio-serial port
#                               org.cloudlab.identity; the line holds the options above plus
#                               cloudlab.mac=MAC (set on the first NIC), cloudlab.seed=HEX (mixed into
#                               the kernel's random pool), cloudlab.time=EPOCH (the clock, set at resume)
#                               and cloudlab.launch=TEMPLATE. A guest restored from the saved template
#                               reads it and carries on exactly as a cold-booted one.
#
# The first line says how the guest started: "cloudlab-launch: cold boot" or
# "cloudlab-launch: restored from template NAME".

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
ssh_key=
metadata=1
identity=
mac=
seed=
clock=
launch=
# The options of the kernel command line, and (a restored template) of the identity line: same words.
read_options() {
    for arg in $1; do
        case "$arg" in
            cloudlab.hostname=*) host=${arg#*=} ;;
            cloudlab.ip=*) ip_config=${arg#*=} ;;
            cloudlab.shell=1) shell=1 ;;
            cloudlab.sshkey=*) ssh_key=${arg#*=} ;;
            cloudlab.metadata=0) metadata= ;;
            cloudlab.identity=channel) identity=channel ;;
            cloudlab.mac=*) mac=${arg#*=} ;;
            cloudlab.seed=*) seed=${arg#*=} ;;
            cloudlab.time=*) clock=${arg#*=} ;;
            cloudlab.launch=*) launch=${arg#*=} ;;
        esac
    done
}
read -r cmdline </proc/cmdline
read_options "$cmdline"

# A booted template waits here, blocked in a shell builtin (no process runs, nothing draws on the
# random pool), until its node writes this instance's identity into the port. Everything that
# differs between siblings restored from one template happens after this point.
if [ "$identity" = channel ]; then
    port=
    for _ in $(seq 100); do
        for dev in /sys/class/virtio-ports/*; do
            [ -r "$dev/name" ] || continue
            read -r name <"$dev/name"
            [ "$name" = org.cloudlab.identity ] && port=/dev/${dev##*/} && break
        done
        [ -n "$port" ] && [ -e "$port" ] && break
        port=
        sleep 0.05
    done
    if [ -n "$port" ]; then
        say "cloudlab-template: waiting for identity"
        line=
        while [ -z "$line" ]; do read -r line <"$port" || sleep 0.1; done
        # The node resends until it reads this (a line written into the port just as the guest
        # resumes can be lost), so the guest confirms what it got.
        echo "cloudlab-identity: ok" >"$port"
        read_options "$line"
        # First, before any program runs: the node's seed into the random pool (a builtin write mixes
        # it in), then the generator reseeded from the pool at once (RNDRESEEDCRNG = _IO('R', 7): Linux
        # 6.1 reseeds on a timer, seconds later, and busybox has no way to ask), so nothing drawn from
        # now on is what a sibling restored from the same template draws.
        if [ -n "$seed" ]; then
            echo "$seed" >/dev/urandom
            perl -e 'open(F, "<", "/dev/urandom") && ioctl(F, 0x5207, 0) || exit 1' ||
                say "cloudlab-init: the random generator was not reseeded"
        fi
        [ -n "$clock" ] && date -s "@${clock%.*}" >/dev/null
        say "cloudlab-launch: restored from template ${launch:-unknown}"
    else
        say "cloudlab-init: no identity port (org.cloudlab.identity); going on as a cold boot"
        say "cloudlab-launch: cold boot"
    fi
else
    say "cloudlab-launch: cold boot"
fi
hostname "$host"
echo "$host" >/etc/hostname
# machine-id: drawn after the reseed above, so siblings of one template each get their own.
read -r machine_id </proc/sys/kernel/random/uuid
echo "$machine_id" | tr -d - >/etc/machine-id
echo "127.0.1.1 $host" >>/etc/hosts

# Network: every interface up; addressing beyond a static cloudlab.ip= is a later stage's job.
ip link set lo up
first_nic=
for dev in /sys/class/net/*; do
    nic=${dev##*/}
    [ "$nic" = lo ] && continue
    if [ -z "$first_nic" ]; then
        first_nic=$nic
        # the instance's own MAC (a restored template's NIC still has the template's)
        [ -n "$mac" ] && ip link set dev "$nic" address "$mac"
    fi
    ip link set "$nic" up
done
if [ -n "$ip_config" ] && [ -n "$first_nic" ]; then
    ip addr add "${ip_config%%,*}" dev "$first_nic"
    case "$ip_config" in *,*) ip route add default via "${ip_config#*,}" dev "$first_nic" ;; esac
fi

# SSH: host keys are made on the first connection (-R), so nothing here delays the marker; -s: no
# password logins (root has none; keys only), so a BatchMode client fails fast instead of asking.
# Started before the metadata requests so that its start-up overlaps them (it reads authorized_keys
# at each login, so keys added below count).
dropbear -R -s -p 22 -P /run/dropbear.pid 2>/dev/null

# Root logs in with keys only: authorized_keys must be root's, the file 600 and its directory 700.
mkdir -p /root/.ssh /run/cloudlab
chmod 700 /root /root/.ssh
add_key() {
    [ -n "$1" ] || return 1
    printf '%s\n' "$1" >>/root/.ssh/authorized_keys
    chmod 600 /root/.ssh/authorized_keys
}
if [ -n "$ssh_key" ]; then
    add_key "$(printf '%s' "$ssh_key" | base64 -d 2>/dev/null)" || say "cloudlab-init: bad cloudlab.sshkey"
fi

# Uptime in centiseconds (/proc/uptime has two decimals; "1" prefix: no octal surprises with "08").
now_cs() {
    read -r up _ </proc/uptime
    echo $((${up%.*} * 100 + 1${up#*.} - 100))
}
# One metadata GET to stdout; status 0 with the body, 2 when the service answered with an error (a
# 404: there is no such item, asking again will not make one), 1 when it did not answer. busybox-static's
# wget has no -T (and crashes on it), so `timeout` bounds each try: connect + request + reply in 5 s.
imds_get() {
    if err=$(timeout 5 wget -q -O /run/cloudlab/imds.body "http://169.254.169.254/latest/$1" 2>&1); then
        cat /run/cloudlab/imds.body
        return 0
    fi
    case "$err" in *"server returned error"*) return 2 ;; esac
    return 1
}
# The same GET tried again until the metadata deadline while the service does not answer: on a busy host
# (twenty guests restored at once on two cores) one try can miss, and a missed key is a guest no one
# can log in to.
imds_fetch() {
    while :; do
        imds_get "$1"
        status=$?
        [ "$status" -eq 1 ] || return "$status"
        [ "$(now_cs)" -lt "$deadline" ] || return 1
        sleep 0.3
    done
}

# Metadata: only with a gateway (169.254.169.254 is reached through the default route). Requests are
# retried while the service does not answer (it may come up just after the VM, or be slow on a busy
# host) for up to 30 s, so with each try bounded by 5 s a cloud without metadata delays the marker by
# at most ~35 s; a service that answers "no such instance" ends the wait at once.
case "$ip_config" in *,*) ;; *) metadata= ;; esac
if [ -n "$metadata" ] && [ -n "$first_nic" ]; then
    deadline=$(($(now_cs) + 3000))
    instance_id=$(imds_fetch meta-data/instance-id) || instance_id=
    if [ -n "$instance_id" ]; then
        key=no
        add_key "$(imds_fetch meta-data/public-keys/0/openssh-key)" && key=yes
        user_data=no
        if imds_fetch user-data >/run/cloudlab/user-data.part; then
            mv /run/cloudlab/user-data.part /run/cloudlab/user-data
            user_data=yes
        else
            rm -f /run/cloudlab/user-data.part
        fi
        say "cloudlab-metadata: instance-id=$instance_id key=$key user-data=$user_data"
    else
        say "cloudlab-metadata: unreachable"
    fi
fi

# Power button -> acpid (reads /dev/input/event*, runs /etc/acpi/power-button).
acpid -c /etc/acpi -a /etc/acpid.conf -l /run/acpid.log -p /run/acpid.pid

# dropbear forks before it binds port 22, so wait (bounded, 2.5 s) until it listens: the marker promises
# a guest that accepts SSH at once (0016 = port 22, 0A = LISTEN in /proc/net/tcp*).
listening=
for _ in $(seq 50); do
    grep -q ':0016 [0-9A-F:]* 0A ' /proc/net/tcp /proc/net/tcp6 2>/dev/null && listening=1 && break
    sleep 0.05
done
[ -n "$listening" ] || say "cloudlab-init: dropbear is not listening on port 22"

read -r uptime _ </proc/uptime
say "cloudlab-boot: ok host=$host uptime=$uptime"

# User data that is a script ("#!") runs once, in the background, after the marker (so a busy script
# does not delay it): output to /var/log/user-data.log, its exit status as one console line.
if [ -f /run/cloudlab/user-data ] && [ "$(head -c 2 /run/cloudlab/user-data)" = "#!" ]; then
    chmod 700 /run/cloudlab/user-data
    (
        cd /root && /run/cloudlab/user-data </dev/null >>/var/log/user-data.log 2>&1
        say "cloudlab-user-data: exit=$?"
    ) &
fi

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
