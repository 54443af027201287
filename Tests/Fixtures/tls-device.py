#!/usr/bin/env python3
"""A Teltonika device over TLS, on Python's ssl module (the system OpenSSL): a TLS stack other than the
server's BoringSSL, for the tests of the TLS port (Tests/IntegrationTests/DeviceTLSTests.swift).

One-shot (the default): connects, shakes hands, prints
    handshake version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 serial=05
(serial: the server certificate's serial number, hex), then sends each frame given (hex, as arguments, or one
per line on stdin with '-') and prints what came back for it:
    reply 01 | closed <hex received before the close> | timeout <hex received before the timeout>
A login frame waits for 1 byte, an AVL frame (00000000...) for 4, a keep-alive (ff) for nothing, anything else
for the close. Without frames it waits up to 1 s for a refusal that TLS 1.3 sends after the client's Finished
(a missing client certificate). Exit 0; 1 when the handshake fails (the reason on stderr); 2 on usage or
connection errors.

--relay: listens on 127.0.0.1 (a free port, printed as "relay <port>"), and relays each plain TCP connection
made to it over a TLS connection of its own to the server, so a plain-TCP test client plays the device over
TLS. A connection whose handshake fails is closed at once (its reason on stderr). Ends when stdin closes.
"""
import argparse
import select
import socket
import ssl
import sys
import threading

VERSIONS = {"1.1": ssl.TLSVersion.TLSv1_1, "1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", help="PEM CA to verify the server's certificate with (default: no verification)")
    parser.add_argument("--cert", help="PEM client certificate (mutual TLS)")
    parser.add_argument("--key", help="PEM private key of --cert")
    parser.add_argument("--max-version", choices=VERSIONS)
    parser.add_argument(
        "--seclevel0",
        action="store_true",
        help="OpenSSL security level 0 (ciphers DEFAULT:@SECLEVEL=0), so the client itself allows TLS 1.1",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer")
    parser.add_argument("--relay", action="store_true")
    parser.add_argument("frames", nargs="*", help="hex frames; '-' reads them from stdin, one a line")
    return parser.parse_args()


def make_context(args):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if args.ca:
        context.load_verify_locations(args.ca)
        context.check_hostname = False  # the chain is checked; the tests connect by address
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if args.cert:
        context.load_cert_chain(args.cert, args.key)
    if args.seclevel0:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    if args.max_version:
        version = VERSIONS[args.max_version]
        # The system's openssl.cnf may set a minimum above it: ask for exactly this version.
        context.minimum_version = version
        context.maximum_version = version
    return context


def der_item(data, offset):
    """The tag, content offset and content length of the DER item at offset."""
    tag, length = data[offset], data[offset + 1]
    offset += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    return tag, offset, length


def serial_number(der):
    """The serialNumber of an X.509 certificate (DER), as hex without leading zeros."""
    _, offset, _ = der_item(der, 0)  # Certificate
    _, offset, _ = der_item(der, offset)  # TBSCertificate
    tag, start, length = der_item(der, offset)
    if tag == 0xA0:  # [0] version
        tag, start, length = der_item(der, start + length)
    value = int.from_bytes(der[start : start + length], "big")
    text = format(value, "x")
    return text if len(text) % 2 == 0 else "0" + text


def handshake(context, args):
    """A TLS connection to the server, its handshake done; raises ssl.SSLError when it fails."""
    raw = socket.create_connection((args.host, args.port), timeout=args.timeout)
    try:
        connection = context.wrap_socket(raw, do_handshake_on_connect=False)
        connection.do_handshake()
    except BaseException:
        raw.close()
        raise
    return connection


def describe(connection):
    der = connection.getpeercert(binary_form=True)
    return f"version={connection.version()} cipher={connection.cipher()[0]} serial={serial_number(der)}"


def expected_answer(frame):
    if frame.startswith(b"\x00\x00\x00\x00"):
        return 4
    if frame == b"\xff":
        return 0
    if len(frame) >= 2 and int.from_bytes(frame[:2], "big") == len(frame) - 2:
        return 1  # a login: length, then the IMEI's digits
    return None  # anything else: read until the server closes


def receive(connection, count, timeout):
    """('reply' | 'closed' | 'timeout', bytes). count None: until the close."""
    received = b""
    connection.settimeout(timeout)
    while count is None or len(received) < count:
        try:
            chunk = connection.recv(4096 if count is None else count - len(received))
        except (socket.timeout, TimeoutError):
            return "timeout", received
        except (ssl.SSLEOFError, ConnectionResetError):
            return "closed", received
        if not chunk:
            return "closed", received
        received += chunk
    return "reply", received


def one_shot(args):
    frames = []
    for item in args.frames:
        frames += [line.strip() for line in sys.stdin if line.strip()] if item == "-" else [item]
    try:
        connection = handshake(make_context(args), args)
    except ssl.SSLError as error:
        print(f"tls-device: handshake failed: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"tls-device: cannot connect to {args.host}:{args.port}: {error}", file=sys.stderr)
        return 2
    print("handshake " + describe(connection), flush=True)
    try:
        if not frames:
            # TLS 1.3: a server that refuses the client's certificate says so after the client's Finished.
            kind, data = receive(connection, 1, 1.0)
            if kind == "closed":
                print("closed " + data.hex(), flush=True)
        for text in frames:
            frame = bytes.fromhex(text)
            connection.sendall(frame)
            count = expected_answer(frame)
            if count == 0:
                continue
            kind, data = receive(connection, count, args.timeout)
            print(f"{kind} {data.hex()}", flush=True)
            if kind == "closed":
                break
    except ssl.SSLError as error:
        print(f"tls-device: handshake failed (refused after the client's Finished): {error}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    return 0


def relay(args):
    context = make_context(args)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(f"relay {listener.getsockname()[1]}", flush=True)

    def serve(plain):
        try:
            connection = handshake(context, args)
        except (ssl.SSLError, OSError) as error:
            print(f"tls-device: relay handshake failed: {error}", file=sys.stderr, flush=True)
            plain.close()
            return
        print("connection " + describe(connection), flush=True)
        # One thread per connection does all its reads and writes: an SSL object is not for two threads at once.
        upstream_open = True
        while True:
            watched = [connection] + ([plain] if upstream_open else [])
            ready = select.select(watched, [], [], 1.0)[0] if connection.pending() == 0 else [connection]
            if connection in ready:
                connection.settimeout(0.05)
                try:
                    data = connection.recv(16384)
                except (socket.timeout, TimeoutError, ssl.SSLWantReadError):
                    data = None
                except OSError:
                    data = b""
                if data == b"":
                    break  # the server closed: so does the device side
                if data:
                    plain.sendall(data)
            if plain in ready:
                data = plain.recv(16384)
                connection.settimeout(None)
                if data:
                    connection.sendall(data)
                else:
                    # The device closed its side: a TCP FIN to the server, without a close_notify, as devices do.
                    socket.socket.shutdown(connection, socket.SHUT_WR)
                    upstream_open = False
        plain.close()
        connection.close()

    def accept():
        while True:
            plain, _ = listener.accept()
            threading.Thread(target=serve, args=(plain,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    sys.stdin.read()  # until the test closes stdin (or ends)
    return 0


def main():
    args = parse_arguments()
    if bool(args.cert) != bool(args.key):
        print("tls-device: --cert and --key go together", file=sys.stderr)
        return 2
    return relay(args) if args.relay else one_shot(args)


if __name__ == "__main__":
    sys.exit(main())
