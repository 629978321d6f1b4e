"""A third-party WebRTC viewer for the interop tests (tests/interop_dtls.rs,
tests/forward_clients.rs): aiortc, whose DTLS offers ECDSA cipher suites only, watches a
producer through a signalling node over the v1 protocol (the upstream
gst-webrtc-signalling-server's JSON), answering the producer's offer.

Runs in the tools venv (./dev setup installs aiortc and websockets there). Prints one JSON
line per event on stdout ({"event": "session" | "track" | "connection" | "frames" | ...});
once connected, a {"event": "dtls-peer"} line names the certificate key the other end
presented and the cipher suite agreed. Exits 0 with a last {"event": "done", "frames": n} once
--frames video frames were decoded; 1 with {"event": "failed", "reason": ...} when the
connection fails (a refused DTLS handshake: aiortc's reason is in a {"event": "dtls"} line
before), the session ends (or signalling does), or --timeout passes first.
"""

import argparse
import asyncio
import json
import logging
import sys

import aioice.ice
import websockets
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp


def say(**fields):
    print(json.dumps(fields), flush=True)


class DtlsFailures(logging.Handler):
    """aiortc logs why a DTLS handshake failed ("fingerprint mismatch", the OpenSSL error) at
    debug level only: said as an event, so a failing test shows the reason."""

    def emit(self, record):
        message = record.getMessage()
        if "fail" in message.lower():
            say(event="dtls", message=message)


def with_loopback():
    """aioice leaves 127.0.0.1 out of its host candidates: add it, so the test also runs on a
    machine (or network namespace) with loopback only."""
    original = aioice.ice.get_host_addresses

    def addresses(use_ipv4, use_ipv6):
        found = original(use_ipv4, use_ipv6)
        if use_ipv4 and "127.0.0.1" not in found:
            found.append("127.0.0.1")
        return found

    aioice.ice.get_host_addresses = addresses


def rsa_suites_only():
    """aiortc's DTLS offering ECDHE-RSA suites only: a client that an ECDSA certificate cannot
    serve ("no shared cipher"), to test what a failed handshake does to the other end."""
    from OpenSSL import SSL

    original = SSL.Context.set_cipher_list

    def rsa_only(self, _ciphers):
        return original(self, b"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384")

    SSL.Context.set_cipher_list = rsa_only


def dtls_peer(pc):
    """The key of the certificate the other end presented ("EC secp256r1", "RSA 2048") and the
    cipher suite agreed, read from aiortc's DTLS transport (its OpenSSL connection is
    private: a missing attribute is reported, not raised)."""
    try:
        transport = pc.getTransceivers()[0].receiver.transport
        ssl = transport._ssl
        key = ssl.get_peer_certificate(as_cryptography=True).public_key()
        curve = getattr(key, "curve", None)
        described = f"EC {curve.name}" if curve else f"RSA {key.key_size}"
        return {"key": described, "cipher": ssl.get_cipher_name()}
    except Exception as e:  # aiortc's internals moved: say so instead of failing the viewer
        return {"key": None, "error": repr(e)}


async def find_producer(ws, name):
    """The id of the first listed producer whose meta.name is `name` (asks until one is)."""
    while True:
        await ws.send(json.dumps({"type": "list"}))
        while True:
            msg = json.loads(await ws.recv())
            if msg.get("type") == "list":
                break
        for producer in msg.get("producers", []):
            if (producer.get("meta") or {}).get("name") == name:
                return producer["id"]
        await asyncio.sleep(0.2)


def mids_by_line(sdp):
    """The a=mid of each m-section, by index (trickled candidates name the m-line index)."""
    mids = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            mids.append(None)
        elif line.startswith("a=mid:") and mids:
            mids[-1] = line[len("a=mid:"):].strip()
    return mids


async def watch(args):
    with_loopback()
    dtls_log = logging.getLogger("aiortc.rtcdtlstransport")
    dtls_log.setLevel(logging.DEBUG)
    dtls_log.addHandler(DtlsFailures())
    pc = RTCPeerConnection()
    frames = 0
    enough = asyncio.Event()
    failed = asyncio.Event()

    @pc.on("track")
    def on_track(track):
        say(event="track", kind=track.kind)
        if track.kind != "video":
            return

        async def count():
            nonlocal frames
            while True:
                try:
                    await track.recv()
                except Exception as e:  # the track ended (MediaStreamError) or the peer left
                    say(event="track-ended", reason=repr(e))
                    return
                frames += 1
                if frames % 10 == 0:
                    say(event="frames", frames=frames)
                if frames >= args.frames:
                    enough.set()

        asyncio.ensure_future(count())

    @pc.on("connectionstatechange")
    def on_state():
        say(event="connection", state=pc.connectionState)
        if pc.connectionState == "connected":
            say(event="dtls-peer", **dtls_peer(pc))
        if pc.connectionState == "failed":
            failed.set()

    async with websockets.connect(args.server) as ws:
        welcome = json.loads(await ws.recv())
        say(event="welcome", peer_id=welcome.get("peerId"))
        producer = await find_producer(ws, args.producer_name)
        await ws.send(json.dumps({"type": "startSession", "peerId": producer}))
        session, mids = None, []

        async def signalling():
            nonlocal session, mids
            async for raw in ws:
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "sessionStarted":
                    session = msg["sessionId"]
                    say(event="session", session_id=session, producer=producer)
                elif kind == "peer" and "sdp" in msg:
                    offer = msg["sdp"]
                    mids = mids_by_line(offer["sdp"])
                    await pc.setRemoteDescription(
                        RTCSessionDescription(sdp=offer["sdp"], type=offer["type"])
                    )
                    await pc.setLocalDescription(await pc.createAnswer())
                    answer = pc.localDescription
                    await ws.send(
                        json.dumps(
                            {
                                "type": "peer",
                                "sessionId": session,
                                "sdp": {"type": answer.type, "sdp": answer.sdp},
                            }
                        )
                    )
                    say(event="answered")
                elif kind == "peer" and "ice" in msg:
                    ice = msg["ice"]
                    text = ice.get("candidate") or ""
                    if not text:
                        continue
                    candidate = candidate_from_sdp(text.split(":", 1)[1])
                    index = ice.get("sdpMLineIndex") or 0
                    candidate.sdpMLineIndex = index
                    candidate.sdpMid = mids[index] if index < len(mids) else None
                    await pc.addIceCandidate(candidate)
                elif kind == "endSession":
                    say(event="session-ended")
                    return
                elif kind == "error":
                    say(event="server-error", details=msg.get("details"))

        task = asyncio.ensure_future(signalling())
        ends = [asyncio.ensure_future(e.wait()) for e in (enough, failed)]
        try:
            # The producer ending the session (or the node closing) ends the watch too.
            await asyncio.wait(
                ends + [task], timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for end in ends + [task]:
                end.cancel()
            await pc.close()
        if not enough.is_set():
            if failed.is_set():
                reason = "connection failed"
            elif task.done() and not task.cancelled():
                error = task.exception()
                reason = f"signalling: {error!r}" if error else "session ended"
            else:
                reason = "timeout"
            say(event="failed", reason=reason, frames=frames)
            return 1
        say(event="done", frames=frames)
        return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="the node's ws:// URL")
    parser.add_argument("--producer-name", required=True, help="the producer's meta.name")
    parser.add_argument("--frames", type=int, default=30, help="video frames to decode")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds")
    parser.add_argument("--debug", action="store_true", help="aiortc's logs on stderr")
    parser.add_argument(
        "--dtls-suites",
        choices=["ecdsa", "rsa"],
        default="ecdsa",
        help="the DTLS cipher suites offered: aiortc's own (ECDSA) or ECDHE-RSA only",
    )
    args = parser.parse_args()
    if args.debug:
        logging.basicConfig(level=logging.DEBUG)
    if args.dtls_suites == "rsa":
        rsa_suites_only()
    sys.exit(asyncio.run(watch(args)))


if __name__ == "__main__":
    main()
