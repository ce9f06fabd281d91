#!/usr/bin/env python3
"""A counting TCP proxy for measuring ggml RPC traffic (bytes per token).

    python3 scripts/rpc-traffic.py LISTEN_PORT TARGET_HOST:TARGET_PORT COUNTS_FILE

Forwards every connection on 127.0.0.1:LISTEN_PORT to the target and rewrites COUNTS_FILE with
`client_to_server server_to_client` (bytes, cumulative) after every forwarded chunk. Point a
client's --rpc at the proxy; the difference of two runs that differ only in the number of
generated tokens, divided by that difference, is the traffic per token. Used by
scripts/rpc-bench.sh.
"""
import socket
import sys
import threading

lock = threading.Lock()
counts = [0, 0]


def pump(src, dst, index, path):
    try:
        while True:
            data = src.recv(1 << 20)
            if not data:
                break
            dst.sendall(data)
            with lock:
                counts[index] += len(data)
                with open(path, "w") as f:
                    f.write(f"{counts[0]} {counts[1]}\n")
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    port = int(sys.argv[1])
    host, tport = sys.argv[2].rsplit(":", 1)
    path = sys.argv[3]
    with open(path, "w") as f:
        f.write("0 0\n")
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(16)
    while True:
        client, _ = srv.accept()
        upstream = socket.create_connection((host, int(tport)))
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump, args=(client, upstream, 0, path), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client, 1, path), daemon=True).start()


if __name__ == "__main__":
    main()
