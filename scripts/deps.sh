#!/bin/bash
# Installs every Debian 12 package vimg needs to build and test (idempotent).
set -e
BUILD_PKGS="meson ninja-build pkg-config gcc clang libjansson-dev liburing-dev libcmocka-dev
    zlib1g-dev libzstd-dev libbz2-dev libnbd-dev libssl-dev libfuse3-dev"
BUILD_PKGS="$BUILD_PKGS libgnutls28-dev"
BUILD_PKGS="$BUILD_PKGS libiscsi-dev"
BUILD_PKGS="$BUILD_PKGS libdeflate-dev"
BUILD_PKGS="$BUILD_PKGS libssh-dev libglusterfs-dev"
PEER_PKGS="qemu-utils python3 bzip2 util-linux kmod strace libnbd-bin nbdkit bximage cloop-utils
    cryptsetup-bin libvhdi-utils fuse3"
PEER_PKGS="$PEER_PKGS gnutls-bin fio"
PEER_PKGS="$PEER_PKGS openssl"
PEER_PKGS="$PEER_PKGS nbd-server"
PEER_PKGS="$PEER_PKGS tgt libiscsi-bin qemu-block-extra"
PEER_PKGS="$PEER_PKGS openssh-server openssh-client glusterfs-server qemu-block-extra"
PEER_PKGS="$PEER_PKGS libvmdk-utils python3-libvhdi python3-libvmdk"
PEER_PKGS="$PEER_PKGS time"
missing=""
for p in $BUILD_PKGS $PEER_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
fi
