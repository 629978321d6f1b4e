// The gst-webrtc-cluster web app: a live list of streams, a grid of watched streams with
// stats, remote control, and publishing the camera, microphone or screen. Built on the stock
// gstwebrtc-api, unchanged; it talks to the node that served the page.
//
// Relays (producers whose meta has `relay-of`) are not listed: a stream is one entry, and
// the node places each tile on the stream's origin or one of its relays (`GET /place`). A
// tile on a relay that goes away, or whose video stops, is placed again.
//
// Each tile asks for video no taller than it shows (`cap.js`): its height in device pixels,
// rounded up to a layer of the source (or a common height); fullscreen, the screen's. Going
// in or out of fullscreen changes the cap, and a cap is fixed for a session: the tile starts
// a new session with the new one (placed again), a moment of black against minutes of a
// layer too high or too low.
//
// ICE servers come from the node (`/api/v1/ice-servers`, a TURN credential minted for the
// page), asked before connecting and again before a session once half their ttl has passed;
// `?relay=1` forces media through TURN, and each tile's overlay says which path it took.
import { capFor, caps, layerOf } from "./cap.js";
import GstWebRTCAPI from "./gstwebrtc-api.js";

// A token in the page's own URL (?token=…) goes on to the WebSocket and the HTTP calls: a
// node with auth on needs one (browsers cannot set WebSocket headers).
const token = new URLSearchParams(location.search).get("token");
const withToken = (url) => (token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : url);
const wsUrl = withToken(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`);
const params = new URLSearchParams(location.search);
// ICE servers: the node's (`GET /api/v1/ice-servers`: its STUN, and a TURN credential minted
// for this page, good for `ttl` seconds; none when it has no TURN), then the URL's
// (?ice=stun:host:port, repeatable). One object, shared by both API connections: the library
// hands it to every RTCPeerConnection it builds (one per session), so a refresh reaches the
// next session. `?relay=1` allows relayed candidates only: does this viewer's network get
// media through TURN?
const urlIce = params.getAll("ice").map((urls) => ({ urls }));
const relayOnly = params.has("relay") && !["0", "false", "no"].includes(params.get("relay"));
// Set whole: the library's defaults (max-bundle, Google's STUN) are replaced, not merged.
const webrtcConfig = {
  iceServers: [...urlIce],
  bundlePolicy: "max-bundle",
  iceTransportPolicy: relayOnly ? "relay" : "all",
};
const nodeIce = { fetchedAt: 0, ttl: 0, failed: false, pending: null };
const $ = (selector) => document.querySelector(selector);

/** Asks the node for its ICE servers; on failure the page goes on with what it has. */
async function fetchNodeIce() {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), 3000);
  try {
    const r = await fetch("/api/v1/ice-servers", {
      cache: "no-store",
      signal: abort.signal,
      headers: token ? { Authorization: `Bearer ${token}` } : {},
    });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const { iceServers, ttl } = await r.json();
    webrtcConfig.iceServers = [...(Array.isArray(iceServers) ? iceServers : []), ...urlIce];
    Object.assign(nodeIce, { fetchedAt: Date.now(), ttl: Number(ttl) || 0, failed: false });
    // The TURN username (EXPIRY:ID, what coturn's log names), never the credential.
    const turn = webrtcConfig.iceServers.find((s) => s.username);
    console.info(`ICE servers from the node: ${webrtcConfig.iceServers.length - urlIce.length}`
      + `${turn ? `, TURN user <${turn.username}>` : ""}, ttl ${nodeIce.ttl} s`);
  } catch (e) {
    nodeIce.failed = true;
    console.warn(`no ICE servers from the node (${e.message || e}), going on with ${webrtcConfig.iceServers.length}`);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Before a new session: the node's servers again once half their ttl has passed (or the last
 * ask failed), so a page open for hours never starts a session on an expired credential.
 */
function freshIce() {
  const stale = nodeIce.failed || (nodeIce.ttl > 0 && Date.now() - nodeIce.fetchedAt > nodeIce.ttl * 500);
  if (stale && !nodeIce.pending) {
    nodeIce.pending = fetchNodeIce().finally(() => { nodeIce.pending = null; });
  }
  return nodeIce.pending ?? Promise.resolve();
}

const hasTurn = () => webrtcConfig.iceServers.some((s) => [s.urls].flat().some((u) => /^turns?:/.test(u)));

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

const isRelay = (peer) => Boolean(peer.meta && peer.meta["relay-of"]);

/** The stream an origin or a relay serves. */
function streamOf(peer) {
  return isRelay(peer) && typeof peer.meta.stream === "string" ? peer.meta.stream : nameOf(peer);
}

/** Whether the origin of `stream` is listed. */
function originListed(stream) {
  return [...producers.values()].some((p) => !isRelay(p) && nameOf(p) === stream);
}

/** Relays of `stream`, shown beside its entry. */
function showRelays(stream) {
  const n = [...producers.values()].filter((p) => isRelay(p) && streamOf(p) === stream).length;
  for (const p of producers.values()) {
    if (!isRelay(p) && nameOf(p) === stream && p.item) {
      p.item.querySelector(".relays").textContent = n ? ` · ${n} relay${n > 1 ? "s" : ""}` : "";
    }
  }
}

/**
 * The member of `stream` the node places a new viewer on (`member`), or null and the node's
 * reason (`why`: an unknown stream is 404, no member with room 503; an older node has no /place).
 */
async function place(stream) {
  // The session that follows builds its peer connection with fresh ICE servers.
  const ice = freshIce();
  try {
    const r = await fetch(withToken(`/place?stream=${encodeURIComponent(stream)}`), { cache: "no-store" });
    if (!r.ok) return { member: null, why: (await r.text()).trim() || `HTTP ${r.status}` };
    const { peerId } = await r.json();
    return { member: producers.get(peerId) || { id: peerId, meta: {} } };
  } catch (e) {
    return { member: null, why: String(e) };
  } finally {
    await ice;
  }
}

fetch("/healthz")
  .then((r) => r.json())
  .then((h) => { $("#node").textContent = h.nodeId; })
  .catch(() => { $("#node").textContent = location.host; });

// The node's ICE servers first (a round trip, 3 s at most), then the connection.
await fetchNodeIce();
const api = new GstWebRTCAPI({
  meta: { name: `viewer-${Math.random().toString(36).slice(2, 8)}` },
  signalingServerUrl: wsUrl,
  reconnectionTimeout: 2000,
  webrtcConfig,
});

function relayNote() {
  if (!relayOnly) return "";
  return hasTurn() ? " · relay only" : " · relay only, but no TURN server: nothing can play";
}

api.registerConnectionListener({
  connected(clientId) { setStatus(`connected as ${clientId.slice(0, 8)}${relayNote()}`, "connected"); },
  disconnected() { setStatus("connection lost, retrying…", "lost"); },
});

api.registerPeerListener({
  producerAdded(producer) {
    if (isRelay(producer)) {
      producers.set(producer.id, { ...producer });
      showRelays(streamOf(producer));
      return;
    }
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = nameOf(producer);
    button.dataset.producerId = producer.id;
    button.addEventListener("click", () => watch(producer));
    const relays = document.createElement("span");
    relays.className = "relays";
    item.append(button, relays);
    $("#producers").append(item);
    producers.set(producer.id, { ...producer, item });
    showRelays(nameOf(producer));
    $("#no-producers").hidden = true;
    for (const tile of tiles.values()) tile.producerAppeared(producer);
  },
  producerRemoved(producer) {
    const known = producers.get(producer.id);
    known?.item?.remove();
    producers.delete(producer.id);
    if (known) showRelays(streamOf(known));
    $("#no-producers").hidden = [...producers.values()].some((p) => !isRelay(p));
    for (const tile of tiles.values()) tile.producerLeft(producer.id);
  },
});

/** One watched stream: video, stats overlay, mute, fullscreen, close, resume. */
class Tile {
  constructor(producer) {
    this.id = `tile-${nextTile++}`;
    this.name = nameOf(producer);
    this.meta = producer.meta || {};
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
    this.el.addEventListener("fullscreenchange", () => this.recap());
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

  /** A session with the member of the stream the node picks (the origin if it cannot). */
  async start(origin) {
    this.setState("connecting…");
    this.returned = null;
    this.el.querySelector(".resume").hidden = true;
    const member = (await place(this.name)).member || origin;
    this.connect(member);
  }

  /** The cap this tile asks for now: its video's height, or fullscreen the screen's. */
  wantedCap() {
    const cssHeight = document.fullscreenElement === this.el
      ? window.screen.height
      : this.video.getBoundingClientRect().height;
    return capFor(cssHeight * (window.devicePixelRatio || 1), this.meta);
  }

  /** In or out of fullscreen: a new session if the cap changed (a cap is per session). */
  async recap() {
    if (this.closing || !this.session || this.wantedCap() === this.cap) return;
    this.setState("resizing…");
    const old = this.session;
    this.session = null;
    old.close();
    const { member } = await place(this.name);
    this.connect(member || { id: this.producerId, meta: this.meta });
  }

  connect(producer) {
    this.producerId = producer.id;
    this.cap = this.wantedCap();
    caps.set(producer.id, this.cap);
    this.el.dataset.cap = String(this.cap);
    this.onRelay = isRelay(producer);
    this.el.dataset.producerId = producer.id;
    this.el.dataset.member = this.onRelay ? "relay" : "origin";
    this.lastBytes = null;
    this.stalled = 0;
    // Frames of this session are counted from here (the video element's count goes on).
    this.playedFrames = this.frames;
    this.playing = false;
    const session = api.createConsumerSession(producer.id);
    if (!session) return this.setState("cannot start a session (not connected)");
    this.session = session;
    session.addEventListener("error", (e) => this.setState(`error: ${e.message}`));
    session.addEventListener("streamsChanged", () => {
      // A layered origin sends each layer as a stream of its own (msid gwc-layer-K, the audio
      // with the top one, docs/protocol.md "Layers"): play the top layer.
      const top = session.streams.find((s) => s.id === "gwc-layer-0") ?? session.streams[0];
      if (top && this.video.srcObject !== top) this.video.srcObject = top;
    });
    session.addEventListener("remoteControllerChanged", () => {
      const rc = session.remoteController;
      if (rc) rc.attachVideoElement(this.video);
      this.el.dataset.remoteControl = rc ? "on" : "off";
    });
    session.addEventListener("closed", () => {
      if (this.session === session) {
        this.session = null;
        // A relay ended the session (it stopped, or could not serve a new codec): elsewhere.
        if (this.onRelay && !this.closing) return this.placeAgain("the relay ended the session");
        if (this.el.dataset.state !== "producer left") this.setState("session closed");
      }
    });
    this.video.addEventListener("playing", () => this.setState(""), { once: true });
    session.connect();
  }

  producerLeft(id) {
    if (id !== this.producerId) return;
    if (this.onRelay && originListed(this.name)) return this.placeAgain("the relay left");
    this.setState("producer left");
    this.session?.close();
  }

  /** Off a relay that is gone or stalled, onto whichever member the node picks now. */
  placeAgain(why) {
    if (this.closing || this.placing) return;
    this.placing = true;
    this.placements = (this.placements || 0) + 1;
    this.el.dataset.placements = String(this.placements);
    this.setState(`${why}: placing again…`);
    const old = this.session;
    this.session = null;
    old?.close();
    setTimeout(async () => {
      this.placing = false;
      const { member, why } = await place(this.name);
      if (member) this.connect(member);
      else this.setState(why);
    }, 300);
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
    // Video stopped on a relay for 3 s while the origin is still there: the relay may have
    // died (its node keeps it for a resume, and passes it over when placing).
    if (this.onRelay && this.session) {
      if (this.frames > this.playedFrames) {
        this.playing = true;
        this.stalled = 0;
        this.playedFrames = this.frames;
      } else if (this.playing) {
        this.stalled += 1;
      }
      if (this.stalled >= 3 && originListed(this.name)) return this.placeAgain("the video stopped");
    }
    const pc = this.session?.rtcPeerConnection;
    if (!pc) return;
    const report = await pc.getStats();
    const byId = new Map();
    report.forEach((s) => byId.set(s.id, s));
    let video = null;
    let pair = null;
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") video = s;
      if (s.type === "transport" && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId) ?? pair;
    });
    // Without selectedCandidatePairId (Firefox): the nominated pair that succeeded.
    report.forEach((s) => {
      if (!pair && s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
    });
    const rtt = pair?.currentRoundTripTime ?? null;
    // The path media takes, by the page's end of the pair: host, srflx, prflx or relay (TURN).
    const local = pair ? byId.get(pair.localCandidateId) : null;
    const path = local?.candidateType ?? "";
    this.el.dataset.path = path;
    if (!video) return;
    const now = performance.now();
    let kbps = 0;
    if (this.lastBytes) {
      kbps = ((video.bytesReceived - this.lastBytes.bytes) * 8) / (now - this.lastBytes.at);
    }
    this.lastBytes = { bytes: video.bytesReceived, at: now };
    const layer = layerOf(video.frameHeight, this.meta);
    this.el.dataset.layer = layer === null ? "" : String(layer);
    const lines = [
      `${video.frameWidth ?? "?"}×${video.frameHeight ?? "?"} @ ${Math.round(video.framesPerSecond ?? 0)} fps`
        + `${layer === null ? "" : ` · layer ${layer}`} · cap ${this.cap}p`,
      `${Math.round(kbps)} kbit/s · rtt ${rtt === null ? "?" : Math.round(rtt * 1000)} ms`
        + `${path ? ` · via ${path}` : ""}${path === "relay" && local.relayProtocol ? ` (${local.relayProtocol})` : ""}`,
      `lost ${video.packetsLost ?? 0} · frames ${this.frames}`,
    ];
    this.el.querySelector(".stats").textContent = lines.join("\n");
    this.el.dataset.width = String(video.frameWidth ?? this.video.videoWidth);
    this.el.dataset.height = String(video.frameHeight ?? this.video.videoHeight);
  }

  close() {
    this.closing = true;
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
    await freshIce();
    const papi = new GstWebRTCAPI({ meta: { name }, signalingServerUrl: wsUrl, reconnectionTimeout: 2000, webrtcConfig });
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
window.gwc = { api, producers, tiles, watch, webrtcConfig, nodeIce };
