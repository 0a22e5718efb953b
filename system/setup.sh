#!/bin/sh -e
# Runs after the packages are installed, in a chroot of the new system, as root, with this
# folder (system/) at /mnt, read-only, as the working directory. Plain Alpine administration:
# whatever it changes is in the image. No secrets here: they come from the stack (system/secrets).

# OpenRC runlevels, as on the original NAS.
rc-update add devfs sysinit
rc-update add dmesg sysinit
rc-update add mdev sysinit
rc-update add hwdrivers sysinit

rc-update add modules boot
rc-update add sysctl boot
rc-update add hostname boot
rc-update add bootmisc boot
rc-update add syslog boot
rc-update add localmount boot   # /media/usb from fstab: the persistence stick
rc-update add seedrng boot      # its seed lives on the stick (conf.d/seedrng)
rc-update add networking boot

rc-update add sshd default
rc-update add srvmonitor default   # the status page on port 80 (system/cmd/srvmonitor, /etc/monitor.d)
rc-update add acpid default     # the power button: /etc/acpi/PWRF/00000080 powers off cleanly
rc-update add local default     # /etc/local.d/*.start

rc-update add mount-ro shutdown
rc-update add killprocs shutdown
rc-update add savecache shutdown

# A login on the serial console: ttyAMA0 on the arm64 NAS, ttyS0 on x86_64 (uname -m says the
# image's architecture, also in a chroot run through qemu-user).
case "$(uname -m)" in
	aarch64) serial=ttyAMA0 ;;
	*) serial=ttyS0 ;;
esac
grep -q "^$serial::" /etc/inittab || echo "$serial::respawn:/sbin/getty -L 115200 $serial vt100" >> /etc/inittab

# Small edits, as the original does them: keys only, never passwords, for SSH; one host key, the
# ed25519 one that the stack's secrets hold (system/secrets).
if [ -f /etc/ssh/sshd_config ]; then
	sed -i 's/^#*PasswordAuthentication .*/PasswordAuthentication no/' /etc/ssh/sshd_config
	sed -i 's|^#*HostKey /etc/ssh/ssh_host_ed25519_key$|HostKey /etc/ssh/ssh_host_ed25519_key|' /etc/ssh/sshd_config
fi
# root's keys come from the skeleton (root/.ssh/authorized_keys), whose folders git keeps as 0755:
# root's home is private, as sshd's StrictModes and Alpine have it.
chmod 0700 /root /root/.ssh
chmod 0600 /root/.ssh/authorized_keys
