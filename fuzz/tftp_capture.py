"""Record the datagrams real TFTP clients send (fuzz/seed.sh): a one-file TFTP server on
127.0.0.1 that answers options with an OACK, sends one short DATA block, and saves every
datagram it receives as a seed file. Usage: tftp_capture.py OUT_DIR PORT_FILE."""
import os
import socket
import struct
import sys

out, port_file = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
main = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
main.bind(("127.0.0.1", 0))
with open(port_file, "w") as f:
    f.write(str(main.getsockname()[1]))
main.settimeout(20)
n = 0


def save(d):
    global n
    with open(os.path.join(out, "client-%02d" % n), "wb") as f:
        f.write(d)
    n += 1


while True:
    try:
        d, peer = main.recvfrom(65536)
    except socket.timeout:
        break
    save(d)
    if d[:2] != b"\x00\x01":
        continue
    fields = d[2:].split(b"\x00")[:-1]
    opts = fields[2:]
    t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t.bind(("127.0.0.1", 0))
    t.settimeout(2)
    if opts:
        pairs = []
        for k, v in zip(opts[0::2], opts[1::2]):
            pairs += [k, b"4" if k.lower() == b"tsize" else v]
        t.sendto(b"\x00\x06" + b"".join(p + b"\x00" for p in pairs), peer)
        try:
            save(t.recvfrom(65536)[0])
        except socket.timeout:
            continue
    t.sendto(struct.pack("!HH", 3, 1) + b"seed", peer)
    try:
        save(t.recvfrom(65536)[0])
    except socket.timeout:
        pass
    t.close()
