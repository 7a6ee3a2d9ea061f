#!/bin/sh
# understudy boot environment: /init (busybox sh). Mounts the virtual filesystems,
# loads the kernel modules, brings up every Ethernet interface with DHCP, then runs the
# understudy agent. Whatever happens, it never exits (that would panic the kernel):
# it ends in a shell on the console, or powers off when understudy.poweroff=1.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "understudy-init: $*"; }

mkdir -p /proc /sys /dev /run /tmp /mnt
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mount -t tmpfs -o mode=0755 tmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755 tmpfs /run
# The console may not have been opened for us (no /dev/console at exec time).
exec </dev/console >/dev/console 2>&1
say "starting on $(uname -r)"

SERVER= SHELL_WANTED=0 POWEROFF=0 DHCP_TRIES=20 BOOT_MAC=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        understudy.server=*) SERVER=${arg#*=} ;;
        understudy.mac=*) BOOT_MAC=${arg#*=} ;;
        understudy.shell=1) SHELL_WANTED=1 ;;
        understudy.poweroff=1) POWEROFF=1 ;;
        understudy.dhcp_tries=*) DHCP_TRIES=${arg#*=} ;;
    esac
done

# Modules: the build wrote them in dependency order; built-ins and modules for absent
# hardware are harmless failures.
MODDIR=/lib/modules/$(uname -r)
if [ -f "$MODDIR/understudy.load" ]; then
    n=0
    while read -r m; do
        insmod "$MODDIR/$m" 2>/dev/null && n=$((n + 1))
    done < "$MODDIR/understudy.load"
    say "loaded $n modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
else
    say "no module list for $(uname -r): kernel and initramfs do not match"
fi
# Let drivers finish probing so that network interfaces and disks exist.
sleep 1

# Network: DHCP on every Ethernet interface at once (a NIC without a cable must not
# hold up the one with the server behind it). udhcpc stays in the foreground until it
# has a lease (or gives up, -n), then forks a daemon that renews it during the deploy.
# When the server said which NIC this machine booted from (understudy.mac), only that
# one is waited for: the others (a public LAN without DHCP) come up in the background.
BOOT_PID=
for dev in /sys/class/net/*; do
    i=${dev##*/}
    [ "$(cat "$dev/type" 2>/dev/null)" = 1 ] || continue
    ip link set "$i" up
    mac=$(cat "$dev/address")
    say "DHCP on $i ($mac)"
    udhcpc -i "$i" -s /etc/udhcpc.script -t "$DHCP_TRIES" -T 2 -n >/dev/null 2>&1 || say "no DHCP answer on $i" &
    [ -n "$BOOT_MAC" ] && [ "$mac" = "$BOOT_MAC" ] && BOOT_PID=$!
done
if [ -n "$BOOT_PID" ]; then
    wait "$BOOT_PID"
else
    wait
fi
ip -4 -o addr show 2>/dev/null | while read -r _ i _ a _; do say "address $a on $i"; done

say "$(/bin/understudy --version 2>&1 || echo '/bin/understudy does not run')"

end() {
    sync
    if [ "$POWEROFF" = 1 ]; then
        say "powering off"
        poweroff -f
    fi
    say "dropping to a shell (exit it to get a new one)"
    while :; do
        setsid cttyhack /bin/sh -l || /bin/sh
        sleep 1
    done
}

if [ "$SHELL_WANTED" = 1 ]; then
    say "understudy.shell=1 on the kernel command line"
    end
fi
if [ -z "$SERVER" ]; then
    say "no understudy.server= on the kernel command line: not starting the agent"
    end
fi
say "starting the agent for $SERVER"
/bin/understudy agent
rc=$?
if [ "$rc" = 0 ]; then
    # The agent reboots by itself after a deploy; it returns only under understudy.reboot=0.
    say "agent finished"
    end
fi
say "agent failed with exit code $rc"
end
