#!/usr/bin/env python3
"""A broken RTSP camera: answers OPTIONS/DESCRIBE/SETUP/PLAY properly (H264 over
TCP-interleaved), then sends bad data. Usage: garbage_camera.py PORT MODE
MODE: random  = '$' frames on channel 0 with random bytes (corrupt RTP header)
      payload = valid RTP headers (v2, one SSRC, seq+1) with random payloads
      ssrc    = valid RTP, SSRC changes every packet
      junk    = bytes that are neither '$' frames nor RTSP messages
Prints READY when listening; serves each client in a thread; stdlib only."""
import os, random, socket, socketserver, struct, sys, threading, time

SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=garbage\r\nt=0 0\r\na=control:*\r\n"
       "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:trackID=0\r\n"
       "a=fmtp:96 packetization-mode=1;profile-level-id=42C01E;"
       "sprop-parameter-sets=Z0LAHtkDxWhAAAADAEAAAAwDxYuS,aMuMsg==\r\n")

class Camera(socketserver.BaseRequestHandler):
    def handle(self):
        sock, buf = self.request, b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = sock.recv(4096)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, url = lines[0].split(" ")[:2]
            hdr = dict(l.split(":", 1) for l in lines[1:] if ":" in l)
            hdr = {k.strip().lower(): v.strip() for k, v in hdr.items()}
            extra, body = "", ""
            if method == "OPTIONS":
                extra = "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n"
            elif method == "DESCRIBE":
                body = SDP
                extra = "Content-Type: application/sdp\r\nContent-Base: %s/\r\n" % url.rstrip("/")
            elif method == "SETUP":
                extra = "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: 12345678;timeout=60\r\n"
            elif method in ("PLAY", "TEARDOWN"):
                extra = "Session: 12345678\r\n"
            resp = "RTSP/1.0 200 OK\r\nCSeq: %s\r\n%sContent-Length: %d\r\n\r\n%s" % (
                hdr.get("cseq", "0"), extra, len(body), body)
            sock.sendall(resp.encode())
            if method == "PLAY":
                threading.Thread(target=self.blast, args=(sock,), daemon=True).start()

    def blast(self, sock):
        seq, ts, ssrc = random.randrange(65536), random.randrange(2**32), 0x1234ABCD
        try:
            for _ in range(1000):
                if MODE == "junk":
                    sock.sendall(b"\x17garbage that is not RTSP\r\n" + os.urandom(64))
                else:
                    if MODE == "random":
                        pkt = os.urandom(random.randrange(12, 1400))
                    else:
                        if MODE == "ssrc":
                            ssrc = random.randrange(2**32)
                        pkt = struct.pack("!BBHII", 0x80, 96, seq, ts, ssrc) + os.urandom(random.randrange(1, 1400))
                    sock.sendall(b"$\x00" + struct.pack("!H", len(pkt)) + pkt)
                seq, ts = (seq + 1) & 0xFFFF, (ts + 3000) & 0xFFFFFFFF
                time.sleep(0.01)
        except OSError:
            pass  # the client hung up, as it should

socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
PORT, MODE = int(sys.argv[1]), sys.argv[2]
with socketserver.ThreadingTCPServer(("127.0.0.1", PORT), Camera) as srv:
    print("READY", flush=True)
    srv.serve_forever()
