// The gst-webrtc-cluster web app: a live list of producers, a grid of watched streams with
// stats, remote control, and publishing the camera, microphone or screen. Built on the stock
// gstwebrtc-api, unchanged; it talks to the node that served the page.
import GstWebRTCAPI from "./gstwebrtc-api.js";

const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
// Host candidates only unless the page is told otherwise (?ice=stun:host:port).
const ice = new URLSearchParams(location.search).getAll("ice").map((urls) => ({ urls }));
const $ = (selector) => document.querySelector(selector);

const producers = new Map(); // id -> {id, meta, item}
const tiles = new Map(); // tile id -> Tile
let nextTile = 0;

function setStatus(text, state) {
  const el = $("#status");
  el.textContent = text;
  el.dataset.state = state;
}

function stateName(state) {
  const names = Object.entries(GstWebRTCAPI.SessionState || {});
  return (names.find(([, v]) => v === state) || [String(state)])[0];
}

function nameOf(peer) {
  return (peer.meta && typeof peer.meta.name === "string" && peer.meta.name) || peer.id;
}

fetch("/healthz")
  .then((r) => r.json())
  .then((h) => { $("#node").textContent = h.nodeId; })
  .catch(() => { $("#node").textContent = location.host; });

const api = new GstWebRTCAPI({
  meta: { name: `viewer-${Math.random().toString(36).slice(2, 8)}` },
  signalingServerUrl: wsUrl,
  reconnectionTimeout: 2000,
  webrtcConfig: { iceServers: ice },
});

api.registerConnectionListener({
  connected(clientId) { setStatus(`connected as ${clientId.slice(0, 8)}`, "connected"); },
  disconnected() { setStatus("connection lost, retrying…", "lost"); },
});

api.registerPeerListener({
  producerAdded(producer) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = nameOf(producer);
    button.dataset.producerId = producer.id;
    button.addEventListener("click", () => watch(producer));
    item.append(button);
    $("#producers").append(item);
    producers.set(producer.id, { ...producer, item });
    $("#no-producers").hidden = true;
    for (const tile of tiles.values()) tile.producerAppeared(producer);
  },
  producerRemoved(producer) {
    const known = producers.get(producer.id);
    if (known) known.item.remove();
    producers.delete(producer.id);
    $("#no-producers").hidden = producers.size > 0;
    for (const tile of tiles.values()) tile.producerLeft(producer.id);
  },
});

/** One watched stream: video, stats overlay, mute, fullscreen, close, resume. */
class Tile {
  constructor(producer) {
    this.id = `tile-${nextTile++}`;
    this.name = nameOf(producer);
    this.frames = 0;
    this.el = document.createElement("figure");
    this.el.className = "tile";
    this.el.id = this.id;
    this.el.innerHTML = `
      <video autoplay playsinline muted tabindex="0"></video>
      <div class="stats" aria-hidden="true"></div>
      <div class="state" role="status" aria-live="polite">connecting…</div>
      <figcaption>
        <span class="name"></span>
        <button type="button" class="mute">Unmute</button>
        <button type="button" class="full">Fullscreen</button>
        <button type="button" class="resume" hidden>Resume</button>
        <button type="button" class="close" aria-label="Close">✕</button>
      </figcaption>`;
    this.video = this.el.querySelector("video");
    this.video.setAttribute("aria-label", `stream ${this.name}`);
    this.el.querySelector(".name").textContent = this.name;
    this.el.querySelector(".mute").addEventListener("click", (e) => {
      this.video.muted = !this.video.muted;
      e.target.textContent = this.video.muted ? "Unmute" : "Mute";
    });
    this.el.querySelector(".full").addEventListener("click", () => this.el.requestFullscreen?.());
    this.el.querySelector(".close").addEventListener("click", () => this.close());
    this.el.querySelector(".resume").addEventListener("click", () => {
      if (this.returned) this.start(this.returned);
    });
    $("#tiles").append(this.el);
    tiles.set(this.id, this);
    this.timer = setInterval(() => this.updateStats(), 1000);
    this.start(producer);
  }

  setState(text) {
    const el = this.el.querySelector(".state");
    el.textContent = text;
    el.hidden = !text;
    this.el.dataset.state = text || "playing";
  }

  start(producer) {
    this.setState("connecting…");
    this.producerId = producer.id;
    this.returned = null;
    this.el.querySelector(".resume").hidden = true;
    this.el.dataset.producerId = producer.id;
    this.lastBytes = null;
    const session = api.createConsumerSession(producer.id);
    if (!session) return this.setState("cannot start a session (not connected)");
    this.session = session;
    session.addEventListener("error", (e) => this.setState(`error: ${e.message}`));
    session.addEventListener("streamsChanged", () => {
      if (session.streams.length > 0) this.video.srcObject = session.streams[0];
    });
    session.addEventListener("remoteControllerChanged", () => {
      const rc = session.remoteController;
      if (rc) rc.attachVideoElement(this.video);
      this.el.dataset.remoteControl = rc ? "on" : "off";
    });
    session.addEventListener("closed", () => {
      if (this.session === session) {
        this.session = null;
        if (this.el.dataset.state !== "producer left") this.setState("session closed");
      }
    });
    this.video.addEventListener("playing", () => this.setState(""), { once: true });
    session.connect();
  }

  producerLeft(id) {
    if (id !== this.producerId) return;
    this.setState("producer left");
    this.session?.close();
  }

  producerAppeared(producer) {
    // Same name back (a new peer id): offer to resume.
    if (this.el.dataset.state === "producer left" && nameOf(producer) === this.name) {
      this.returned = producer;
      this.el.querySelector(".resume").hidden = false;
      this.setState("producer back: resume?");
      this.el.dataset.state = "producer back";
    }
  }

  async updateStats() {
    const q = this.video.getVideoPlaybackQuality?.();
    this.frames = q ? q.totalVideoFrames : 0;
    this.el.dataset.frames = String(this.frames);
    const pc = this.session?.rtcPeerConnection;
    if (!pc) return;
    const report = await pc.getStats();
    let video = null;
    let rtt = null;
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") video = s;
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) {
        rtt = s.currentRoundTripTime;
      }
    });
    if (!video) return;
    const now = performance.now();
    let kbps = 0;
    if (this.lastBytes) {
      kbps = ((video.bytesReceived - this.lastBytes.bytes) * 8) / (now - this.lastBytes.at);
    }
    this.lastBytes = { bytes: video.bytesReceived, at: now };
    const lines = [
      `${video.frameWidth ?? "?"}×${video.frameHeight ?? "?"} @ ${Math.round(video.framesPerSecond ?? 0)} fps`,
      `${Math.round(kbps)} kbit/s · rtt ${rtt === null ? "?" : Math.round(rtt * 1000)} ms`,
      `lost ${video.packetsLost ?? 0} · frames ${this.frames}`,
    ];
    this.el.querySelector(".stats").textContent = lines.join("\n");
    this.el.dataset.width = String(video.frameWidth ?? this.video.videoWidth);
    this.el.dataset.height = String(video.frameHeight ?? this.video.videoHeight);
  }

  close() {
    clearInterval(this.timer);
    this.session?.close();
    this.el.remove();
    tiles.delete(this.id);
  }
}

function watch(producer) {
  return new Tile(producer);
}

// Publishing: a second API connection whose meta carries the chosen display name.
let publisher = null;
$("#publish").addEventListener("submit", async (event) => {
  event.preventDefault();
  const what = event.submitter?.value || "camera";
  const name = $("#publish-name").value.trim() || "browser";
  const stateEl = $("#publish-state");
  try {
    const stream = what === "screen"
      ? await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false })
      : await navigator.mediaDevices.getUserMedia(what === "camera" ? { video: true, audio: false } : { audio: true });
    publisher?.close();
    const papi = new GstWebRTCAPI({ meta: { name }, signalingServerUrl: wsUrl, reconnectionTimeout: 2000, webrtcConfig: { iceServers: ice } });
    const session = await new Promise((resolve) => {
      papi.registerConnectionListener({
        connected() { resolve(papi.createProducerSession(stream)); },
        disconnected() { stateEl.textContent = "Publishing: connection lost, retrying…"; },
      });
    });
    publisher = { close() { session.close(); stream.getTracks().forEach((t) => t.stop()); } };
    session.addEventListener("stateChanged", () => { stateEl.textContent = `Publishing '${name}' (${what}): ${stateName(session.state)}`; });
    session.addEventListener("error", (e) => { stateEl.textContent = `Publishing failed: ${e.message}`; });
    session.addEventListener("closed", () => { stateEl.textContent = "Not publishing."; $("#publish-stop").disabled = true; });
    session.start();
    stateEl.textContent = `Publishing '${name}' (${what})`;
    document.body.dataset.publishing = name;
    $("#publish-stop").disabled = false;
  } catch (e) {
    stateEl.textContent = `Cannot publish: ${e.message}`;
  }
});
$("#publish-stop").addEventListener("click", () => { publisher?.close(); publisher = null; });

// For tests and the curious: the app's state.
window.gwc = { api, producers, tiles, watch };
