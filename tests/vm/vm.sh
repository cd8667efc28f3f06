#!/usr/bin/env bash
# Runs Wireway's privileged tests in a stock Debian kernel under QEMU, for a kernel with
# WireGuard when the host has none (and, later, the kernel WireGuard backend).
#
#   bash tests/vm/vm.sh test         the node agent's kernel tests, inside the VM
#   bash tests/vm/vm.sh run SCRIPT   any shell script, inside the VM (exit status passed on)
#
# The VM boots Debian's generic kernel with a busybox initramfs, mounts the host's root
# read-only over virtio-9p with a RAM overlay on top, and runs the script there: binaries
# built on the host run unchanged. Packages are downloaded with apt-get and unpacked, not
# installed (installing qemu-system-x86 would replace the machine's qemu-utils, and a
# kernel package pulls systemd upgrades). /dev/kvm is not used: TCG only.
#
# Cached in target/vm. When the packages cannot be downloaded, this says so and exits 77:
# an infrastructure skip, not a pass.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=$repo/target/vm
root=$cache/root

skip() { echo "vm: infrastructure skip: $*" >&2; exit 77; }

fetch() {
    # The initramfs is made again each run (seconds), so a change of its modules counts.
    [ -f "$cache/ready" ] && { initramfs "$(cat "$cache/version")"; return; }
    rm -rf "$cache"; mkdir -p "$cache/debs" "$root"
    local kernel
    kernel=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
    [ -n "$kernel" ] || skip "apt-cache does not know linux-image-amd64 (run apt-get update)"
    (cd "$cache/debs" && apt-get download -q "$kernel" qemu-system-x86 qemu-system-common \
        qemu-system-data seabios busybox-static libcapstone4 libfdt1 libibverbs1 libpmem1 \
        librdmacm1 libslirp0 libvdeplug2 libndctl6 libdaxctl1 libnl-3-200 libnl-route-3-200 \
        liburing2 libfuse3-3 libaio1 >/dev/null 2>&1) || skip "could not download $kernel and QEMU"
    for deb in "$cache"/debs/*.deb; do dpkg-deb -x "$deb" "$root"; done
    # Every library QEMU links must be here or on the host: a machine without one fails
    # here, naming it, rather than as a VM that never speaks.
    local missing
    missing=$(LD_LIBRARY_PATH=$(libs) ldd "$root/usr/bin/qemu-system-x86_64" | awk '/not found/ {print $1}')
    [ -z "$missing" ] || { echo "vm: QEMU needs libraries this script does not download: $missing" >&2; exit 1; }
    local version=${kernel#linux-image-}
    depmod -b "$root" "$version"
    echo "$version" > "$cache/version"
    initramfs "$version"
    touch "$cache/ready"
}

initramfs() {
    local version=$1 dir=$cache/initramfs
    rm -rf "$dir"; mkdir -p "$dir"/{bin,proc,sys,dev,host,rw,newroot}
    cp "$root/bin/busybox" "$dir/bin/"
    # The modules the VM needs (nf_tables, nft_limit and nft_socket: the agent's table inet wireway;
    # crc32c_generic: the soft dependency of its libcrc32c, which modprobe does not list)
    # and everything they depend on, as modprobe resolves them.
    local modules="virtio_pci 9pnet_virtio 9p overlay wireguard veth tun bridge crc32c_generic nf_tables nft_limit nft_socket"
    for m in $modules; do
        modprobe -d "$root" -S "$version" --show-depends "$m" | awk '/^insmod/ {print $2}'
    done | sort -u | while read -r ko; do
        mkdir -p "$dir$(dirname "${ko#"$root"}")"; cp "$ko" "$dir${ko#"$root"}"
    done
    cp "$root/lib/modules/$version"/modules.* "$dir/lib/modules/$version/"
    cat > "$dir/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $modules; do modprobe \$m || echo "vm: modprobe \$m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 host /host
mount -t tmpfs rw /rw; mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot
script=\$(sed -n 's/.*ww.script=\([^ ]*\).*/\1/p' /proc/cmdline)
chroot /newroot /bin/sh -c "mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs run /run; mkdir -p /run/netns; sh \$script"
echo "vm: exit=\$?"
poweroff -f
INIT
    chmod +x "$dir/init"
    (cd "$dir" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$cache/initramfs.gz")
}

libs() { echo "$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu"; }

run() {
    local script
    script=$(realpath "$1")
    fetch
    local version
    version=$(cat "$cache/version")
    LD_LIBRARY_PATH=$(libs) timeout 1200 "$root/usr/bin/qemu-system-x86_64" -accel tcg -m 2048 -smp 2 \
        -L "$root/usr/share/seabios" -L "$root/usr/share/qemu" \
        -kernel "$root/boot/vmlinuz-$version" -initrd "$cache/initramfs.gz" \
        -append "console=ttyS0 quiet panic=-1 ww.script=$script" \
        -nographic -no-reboot -nic none \
        -fsdev "local,id=host,path=/,security_model=none,readonly=on,multidevs=remap" \
        -device virtio-9p-pci,fsdev=host,mount_tag=host 2>/dev/null | tee "$cache/console.log" \
        | tr -d '\r' | sed -e 's/\x1bc//g' -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g' -e 's/^Booting from ROM\.*//' \
        | grep -v -e '^\s*$' -e '^SeaBIOS' -e 'reboot: Power down' || true
    local status
    status=$(tr -d '\r' < "$cache/console.log" | sed -n 's/^vm: exit=\([0-9]*\)$/\1/p' | tail -1)
    [ -n "$status" ] || { echo "vm: the VM did not report an exit status (see target/vm/console.log)" >&2; return 1; }
    return "$status"
}

test_agent() {
    local bin
    bin=$(cd "$repo" && cargo test -q -p wireway-agent --test kernel --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "kernel":
        print(m["executable"])' | tail -1)
    [ -n "$bin" ] || { echo "vm: could not build the agent's kernel tests" >&2; return 1; }
    local script=$cache/agent-tests.sh
    fetch
    cat > "$script" <<SCRIPT
set -e
echo "vm: kernel \$(uname -r); WireGuard module: \$(ip link add wwvmcheck type wireguard && ip link del wwvmcheck && echo present)"
cd "$repo/node-agent" && CI=true WIREWAY_EXPECT_BACKEND=kernel "$bin" --test-threads 1 --color never --nocapture
SCRIPT
    run "$script"
}

case ${1:-} in
    run) shift; [ $# -eq 1 ] || { echo "usage: $0 run SCRIPT" >&2; exit 2; }; run "$1" ;;
    test) test_agent ;;
    *) echo "usage: $0 test | run SCRIPT" >&2; exit 2 ;;
esac
