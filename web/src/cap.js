// A tile's cap on the video height it asks for (issue 26): v2 `startSession.maxHeight`, so a
// small tile does not pull a 720p layer a forward relay could serve it lower.
//
// gstwebrtc-api writes `startSession` itself and opens its WebSocket with the URL alone, so it
// speaks v1, where a node ignores `maxHeight` (docs/protocol.md). The page does not change the
// library: it gives it a WebSocket that offers protocol v2 (a node of ours picks it; the page
// is only ever served by one) and that adds the cap the page set for a producer to the
// `startSession` naming it. gstwebrtc-api ignores what v2 adds to `welcome`, and logs the
// v2-only messages (`goAway`, `tokenExpiring`) as unknown.

// Heights a cap is rounded up to when the source has no ladder: common video heights.
const STEPS = [180, 360, 540, 720, 1080, 1440, 2160, 4320];
const MAX_HEIGHT = 8192;

/** The heights of a layered source's layers (meta `layers`: `WxH@kbps,…`, top first). */
export function layerHeights(meta) {
  const text = meta && typeof meta.layers === "string" ? meta.layers : "";
  return text.split(",").map((l) => Number((/^\s*\d+x(\d+)@\d+\s*$/.exec(l) || [])[1]))
    .filter((h) => h > 0);
}

/**
 * The cap for a picture `pixels` device pixels high: the smallest layer at least that tall
 * (the top layer if none is), or without layers the smallest common height at least that.
 */
export function capFor(pixels, meta) {
  const need = Math.max(1, Math.ceil(pixels));
  const layers = layerHeights(meta).sort((a, b) => a - b);
  const steps = layers.length ? layers : STEPS;
  const step = steps.find((h) => h >= need) ?? (layers.length ? steps[steps.length - 1] : need);
  return Math.min(step, MAX_HEIGHT);
}

/** Which layer (0 = top) a received height is, when the source has layers. */
export function layerOf(height, meta) {
  const k = layerHeights(meta).indexOf(height);
  return k >= 0 ? k : null;
}

/** Caps by producer id, added to the `startSession` that names it. */
export const caps = new Map();

const NativeWebSocket = window.WebSocket;
window.WebSocket = class CappingWebSocket extends NativeWebSocket {
  constructor(url, protocols) {
    super(url, protocols ?? ["gstwebrtc-cluster.v2", "gstwebrtc-cluster.v1"]);
  }

  send(data) {
    if (typeof data === "string" && data.startsWith('{"type":"startSession"')) {
      const msg = JSON.parse(data);
      const cap = caps.get(msg.peerId);
      if (cap && this.protocol === "gstwebrtc-cluster.v2") data = JSON.stringify({ ...msg, maxHeight: cap });
    }
    super.send(data);
  }
};
