#!/usr/bin/env bash
# Builds the QEMU test guest used by tests/guest/guest_test.sh: Debian's own
# kernel (linux-image-amd64, from /boot) and a small initramfs assembled from
# Debian packages (busybox-static, e2fsprogs, the kernel's modules) with
# tests/guest/init.sh as /init.
#
# Usage: scripts/build-guest.sh [OUTDIR]        (default: var/guest)
# Writes OUTDIR/vmlinuz (a link to the kernel), OUTDIR/initramfs.cpio.gz and
# OUTDIR/kernel-version. Does nothing when its inputs did not change, so
# tests can call it every time; concurrent calls wait for each other.
# With fio installed (Debian package fio) it also writes
# OUTDIR/initramfs-fio.cpio.gz: the same image plus /usr/bin/fio and its
# shared libraries, for bench/vhost-vs-qsd.sh. fio's libraries (ceph,
# gluster, ICU...) are about 80 MiB, so they are a second archive appended
# to the first (the kernel unpacks concatenated archives in order) rather
# than part of the image every guest test boots.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$repo/var/guest}
guest_src=$repo/tests/guest

die() { echo "build-guest: $*" >&2; exit 1; }
# Names the Debian package to install, since that is the fix on a CI image.
need_file() {  # need_file PATH PACKAGE
  [[ -e $1 ]] || die "$1 is missing: install the Debian package $2 (scripts/install-deps.sh)"
}

# The newest Debian kernel that has its modules installed: the guest loads
# virtio/nvme/ext4 as modules, so a kernel without /lib/modules is useless.
kernel=
mapfile -t candidates < <(compgen -G '/boot/vmlinuz-*-amd64' | sort -rV)
for candidate in "${candidates[@]}"; do
  if [[ -f /lib/modules/${candidate#/boot/vmlinuz-}/modules.dep ]]; then
    kernel=$candidate
    break
  fi
done
[[ -n $kernel ]] || die "no /boot/vmlinuz-*-amd64 with modules in /lib/modules: install the Debian package linux-image-amd64"
[[ -r $kernel ]] || die "$kernel is not readable by $(id -un)"
kver=${kernel#/boot/vmlinuz-}
moddir=/lib/modules/$kver

busybox=/bin/busybox
need_file "$busybox" busybox-static
# The busybox package (not -static) also installs /bin/busybox, but linked
# against libc; the initramfs has no libraries for it.
if ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is dynamically linked: install the Debian package busybox-static"
fi
# busybox's own mke2fs makes only ext2; e2fsprogs' tools are copied with
# their shared libraries instead.
e2fs_tools=(/sbin/mke2fs /sbin/e2fsck)
for tool in "${e2fs_tools[@]}"; do need_file "$tool" e2fsprogs; done
need_file /etc/mke2fs.conf e2fsprogs
command -v python3 >/dev/null || die "python3 is missing: install the Debian package python3"

# Modules the guest loads, in this order, each after its dependencies.
# crc32c_generic: ext4 and jbd2 ask the crypto API for "crc32c" (a softdep,
# which insmod does not follow; crc32c-intel needs SSE4.2, not in every
# emulated CPU). The *_generic crc modules spare nvme-core's crc users a
# request_module() call the initramfs cannot answer.
wanted_modules=(virtio_pci virtio_blk crct10dif_generic crc64_rocksoft_generic nvme crc32c_generic ext4)

# Resolves module names through modules.dep into a load order: for each
# module its dependencies (modules.dep lists them nearest first, so they
# load in reverse), then the module itself; each path once.
resolve_modules() {
  awk -v wanted="${wanted_modules[*]}" '
    function name(path,   n) { n = path; sub(/.*\//, "", n); sub(/\.ko(\.[a-z]+)?$/, "", n); gsub(/-/, "_", n); return n }
    function add(path) { if (!(path in seen)) { seen[path] = 1; order[++count] = path } }
    {
      sub(/:$/, "", $1); mod = $1; sub(/:.*/, "", mod)
      deps[name(mod)] = $0; path[name(mod)] = mod
    }
    END {
      n = split(wanted, w, " ")
      for (i = 1; i <= n; i++) {
        m = w[i]
        if (!(m in path)) { print "missing module " m > "/dev/stderr"; exit 1 }
        k = split(deps[m], d, " ")
        for (j = k; j >= 2; j--) add(d[j])
        add(path[m])
      }
      for (i = 1; i <= count; i++) print order[i]
    }' "$moddir/modules.dep"
}
modules=$(resolve_modules) || die "a module is missing from $moddir (is linux-image-$kver complete?)"
mapfile -t module_paths <<<"$modules"
module_paths=("${module_paths[@]/#/$moddir/}")
for module in "${module_paths[@]}"; do
  case $module in
    *.xz) command -v xz >/dev/null || die "$module is xz-compressed: install the Debian package xz-utils" ;;
    *.zst) command -v zstd >/dev/null || die "$module is zstd-compressed: install the Debian package zstd" ;;
  esac
done

shared_libraries() { ldd "$@" | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}' | sort -u; }
libraries=$(shared_libraries "${e2fs_tools[@]}")

# Optional: without fio only the bench's image is missing, not the tests'.
fio_bin=/usr/bin/fio
fio_libraries=
if [[ -x $fio_bin ]]; then
  # Those the base image does not have already (libc and the loader do).
  fio_libraries=$(comm -23 <(shared_libraries "$fio_bin") <(echo "$libraries"))
else
  fio_bin=
fi

# Everything the image is made of, so an unchanged image is not rebuilt.
stamp=$(
  {
    echo "$kernel $kver"
    sha256sum "${BASH_SOURCE[0]}" "$guest_src/init.sh" "$guest_src/pattern.awk"
    # shellcheck disable=SC2086  # $libraries: one path a word
    stat -L -c '%n %s %Y' "$kernel" "$busybox" "${e2fs_tools[@]}" /etc/mke2fs.conf $libraries "${module_paths[@]}"
    # shellcheck disable=SC2086  # one path a word
    [[ -z $fio_bin ]] || stat -L -c '%n %s %Y' "$fio_bin" $fio_libraries
  } | sha256sum | cut -d' ' -f1
)

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9
if [[ -f $out/initramfs.cpio.gz && -f $out/stamp && $(cat "$out/stamp") == "$stamp" &&
  (-z $fio_bin || -f $out/initramfs-fio.cpio.gz) ]]; then
  echo "build-guest: $out is up to date (kernel $kver)"
  exit 0
fi

echo "build-guest: building $out/initramfs.cpio.gz (kernel $kver)"
root=$out/root
rm -rf "$root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/local/sbin,etc,proc,sys,dev,tmp,mnt,lib/modules/"$kver"}

cp "$busybox" "$root/bin/busybox"
# Applet links made here rather than by `busybox --install` in the guest,
# so /init's interpreter (/bin/sh) exists before anything runs.
while read -r applet; do
  [[ $applet == bin/busybox ]] && continue
  mkdir -p "$root/$(dirname "$applet")"
  ln -sf /bin/busybox "$root/$applet"
done < <("$busybox" --list-full)

# e2fsprogs tools go to /usr/local/sbin, which comes first in the guest's
# PATH, so they win over busybox's ext2-only mke2fs.
for tool in "${e2fs_tools[@]}"; do cp "$tool" "$root/usr/local/sbin/"; done
ln -s mke2fs "$root/usr/local/sbin/mkfs.ext4"
cp /etc/mke2fs.conf "$root/etc/"
ln -s /proc/mounts "$root/etc/mtab"  # e2fsprogs checks it for mounted devices
for lib in $libraries; do  # at the paths ldd and the ELF interpreter name
  mkdir -p "$root/$(dirname "$lib")"
  cp -L "$lib" "$root/$lib"
done

# Compressed modules are decompressed here: busybox insmod hands the file to
# the kernel as is, and only kernels built with MODULE_DECOMPRESS take them.
for module in $modules; do
  src=$moddir/$module
  dst=$root/lib/modules/$kver/${module%.ko*}.ko
  mkdir -p "$(dirname "$dst")"
  case $src in
    *.ko) cp "$src" "$dst" ;;
    *.ko.xz) xz -dc "$src" >"$dst" ;;
    *.ko.zst) zstd -qdc "$src" >"$dst" ;;
    *.ko.gz) gzip -dc "$src" >"$dst" ;;
    *) die "unknown module format: $src" ;;
  esac
  echo "${module%.ko*}.ko"
done >"$root/etc/modules"

install -m 0755 "$guest_src/init.sh" "$root/init"
cp "$guest_src/pattern.awk" "$root/etc/pattern.awk"

# newc cpio written here rather than with cpio(1): it needs /dev/console as a
# character device (the kernel opens it for /init's stdio before anything
# can mount devtmpfs), which cpio(1) could only copy from a real node made
# as root; fixed owners and times also keep the image reproducible.
write_cpio() {  # write_cpio ROOT TARGET [console]: ROOT's tree as a gzipped newc archive
  python3 - "$@" <<'PY'
import gzip, os, stat, sys

root, target = sys.argv[1], sys.argv[2]
console = sys.argv[3:] == ["console"]
inode = 0

def entry(out, name, mode, data=b"", rdev=(0, 0)):
    global inode
    inode += 1
    name_bytes = name.encode() + b"\0"
    fields = [inode, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_bytes), 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out.write(header + name_bytes)
    out.write(b"\0" * (-(len(header) + len(name_bytes)) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))

with gzip.GzipFile(target, "wb", compresslevel=6, mtime=0) as out:
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                entry(out, rel, st.st_mode, os.readlink(path).encode())
            elif stat.S_ISDIR(st.st_mode):
                entry(out, rel, st.st_mode)
            else:
                with open(path, "rb") as f:
                    entry(out, rel, st.st_mode, f.read())
    if console:
        entry(out, "dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    entry(out, "TRAILER!!!", 0)
PY
}
write_cpio "$root" "$out/initramfs.cpio.gz.tmp" console
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"

if [[ -n $fio_bin ]]; then
  # Only new files: directories the base archive made already are skipped
  # by the kernel's unpacker (mkdir fails with EEXIST, which it ignores).
  fio_root=$out/root-fio
  rm -rf "$fio_root"
  mkdir -p "$fio_root/usr/bin"
  cp "$fio_bin" "$fio_root/usr/bin/fio"
  for lib in $fio_libraries; do
    mkdir -p "$fio_root/$(dirname "$lib")"
    cp -L "$lib" "$fio_root/$lib"
  done
  write_cpio "$fio_root" "$out/fio.cpio.gz.tmp"
  cat "$out/initramfs.cpio.gz" "$out/fio.cpio.gz.tmp" >"$out/initramfs-fio.cpio.gz.tmp"
  mv "$out/initramfs-fio.cpio.gz.tmp" "$out/initramfs-fio.cpio.gz"
  rm -rf "$fio_root" "$out/fio.cpio.gz.tmp"
else
  rm -f "$out/initramfs-fio.cpio.gz"  # stale: would not match this image
  echo "build-guest: fio is not installed (Debian package fio): no initramfs-fio.cpio.gz"
fi
ln -sfn "$kernel" "$out/vmlinuz"
echo "$kver" >"$out/kernel-version"
echo "$stamp" >"$out/stamp"
rm -rf "$root"
echo "build-guest: done ($(du -h "$out/initramfs.cpio.gz" | cut -f1), $(wc -l <<<"$modules") modules$(
  [[ -z $fio_bin ]] || echo "; with fio: $(du -h "$out/initramfs-fio.cpio.gz" | cut -f1)"))"
