import socket, struct, sys, time
# usage: stall.py SOCKET CLIENTS READ_LENGTH READS_PER_CLIENT HOLD_SECONDS
path, clients, length, reads, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
socks = []
def recvn(s, n):
    b = b""
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d: raise EOFError
        b += d
    return b
for i in range(clients):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(path)
    recvn(s, 18)
    s.sendall(struct.pack(">I", 3))
    s.sendall(struct.pack(">QII", 0x49484156454f5054, 1, 0))
    recvn(s, 10)
    for r in range(reads):
        s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, i * 100 + r, 0, length))
    socks.append(s)
print("stalled", len(socks), flush=True)
time.sleep(hold)
for s in socks: s.close()
print("closed", flush=True)
time.sleep(3600)
