#!/usr/bin/env python3
"""A TLS terminator for tests: puts a plain HTTP test server behind https.

    tls-proxy.py CERT KEY BACKEND_PORT

Listens on 127.0.0.1 (an ephemeral port, printed on stdout as its first line), completes a
TLS handshake with each client using CERT and KEY (Python's ssl module, i.e. OpenSSL), then
relays bytes both ways to 127.0.0.1:BACKEND_PORT. A client that refuses the certificate
ends its own connection; nothing reaches the backend then. Runs until killed."""
import socket
import ssl
import sys
import threading

cert, key, backend = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
lsock = socket.socket()
lsock.bind(("127.0.0.1", 0))
lsock.listen(16)
print(lsock.getsockname()[1], flush=True)


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def serve(conn):
    try:
        tls = ctx.wrap_socket(conn, server_side=True)
    except (ssl.SSLError, OSError):
        conn.close()
        return
    up = socket.create_connection(("127.0.0.1", backend))
    threading.Thread(target=pump, args=(up, tls), daemon=True).start()
    pump(tls, up)


while True:
    c, _ = lsock.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
