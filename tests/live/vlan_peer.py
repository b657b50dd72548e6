#!/usr/bin/env python3
"""The host side of the live image's VLAN uplink (acceptance 5 of issue 7).

    ip netns exec NS tests/live/vlan_peer.py QEMU_SOCK PEER_SOCK VID ADDR/PREFIX STATS

QEMU's second NIC sends its frames as datagrams on a Unix socket (-netdev dgram). This
relay is the 802.1q end of that wire: frames tagged with VID lose their tag and go to a TAP
(`peer0`, ADDR/PREFIX) in this network namespace, whose kernel answers them; its frames get
the tag back on the way to QEMU. Untagged frames and other VLANs are dropped and counted, so
a guest reaches the peer only on VID. (This host's kernel has no 802.1q devices, hence a
relay instead of a VLAN sub-interface in the namespace.) Counts go to STATS as JSON, at
every change.
"""

import fcntl
import json
import os
import select
import socket
import struct
import subprocess
import sys

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def main(qemu_sock, peer_sock, vid, addr, stats_path):
    vid = int(vid)
    tap = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH", b"peer0", IFF_TAP | IFF_NO_PI))
    for cmd in (["sysctl", "-qw", "net.ipv6.conf.peer0.disable_ipv6=1"],
                ["ip", "link", "set", "lo", "up"],
                ["ip", "addr", "add", addr, "dev", "peer0"],
                ["ip", "link", "set", "peer0", "up"]):
        subprocess.run(cmd, check=True)
    if os.path.exists(peer_sock):
        os.unlink(peer_sock)
    wire = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    wire.bind(peer_sock)
    stats = {"tagged_in": 0, "untagged_dropped": 0, "other_vlan_dropped": 0, "tagged_out": 0}

    def save():
        with open(stats_path + ".tmp", "w") as f:
            json.dump(stats, f)
        os.rename(stats_path + ".tmp", stats_path)

    save()
    print("vlan peer ready", flush=True)
    while True:
        r, _, _ = select.select([wire, tap], [], [])
        if wire in r:
            frame = wire.recv(65536)
            if len(frame) < 18:
                continue
            (ethertype,) = struct.unpack("!H", frame[12:14])
            if ethertype != 0x8100:
                stats["untagged_dropped"] += 1
            elif struct.unpack("!H", frame[14:16])[0] & 0x0FFF != vid:
                stats["other_vlan_dropped"] += 1
            else:
                os.write(tap, frame[:12] + frame[16:])
                stats["tagged_in"] += 1
            save()
        if tap in r:
            frame = os.read(tap, 65536)
            tagged = frame[:12] + struct.pack("!HH", 0x8100, vid) + frame[12:]
            try:
                wire.sendto(tagged, qemu_sock)
                stats["tagged_out"] += 1
            except OSError:
                pass  # QEMU is not there (yet, or any more)
            save()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
