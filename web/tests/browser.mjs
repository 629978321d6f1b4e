// Drives Debian's Chromium, headless, through playwright-core, for tests/web.rs.
// Prints one JSON object per line on stdout as things happen.
//
//   node browser.mjs watch URL NAME SCREENSHOT [CLICKS] [resume]
//     opens the app, clicks producer NAME, reports the playing video (size, frames, pixels),
//     clicks CLICKS times in the tile, then reports when NAME leaves the list; with `resume`,
//     waits for a producer of that name to return, clicks the tile's Resume and reports it
//     playing again.
//   node browser.mjs stream URL NAME
//     clicks stream NAME (one entry, whatever its relays), reports the tile playing and the
//     member it was placed on (origin or relay), then waits until the tile has been placed
//     again (e.g. its relay was killed) and plays, and reports that.
//   node browser.mjs play URL NAME
//     clicks stream NAME, waits until the tile plays, and reports what the page received: the
//     member it was placed on, decoded frames rising, the picture, the media stream's tracks,
//     the peer connection's inbound RTP per kind (codec, packets rising), the DTLS transport
//     (cipher), the certificate the remote end presented (DER, hex) and the ICE candidates the
//     page gathered. BROWSER_MDNS=1 (any mode) keeps Chromium's mDNS host candidates.
//   node browser.mjs publish URL NAME SECONDS
//     publishes the fake camera as NAME for SECONDS.
//   node browser.mjs cap URL NAME
//     in a small window (480×360 on a 1280×720 screen), clicks producer NAME and reports the
//     tile's cap (the maxHeight its startSession asks for), then makes the tile fullscreen
//     and reports the cap of the session it starts again.
//   node browser.mjs layers URL NAME
//     in a small window at a quarter device pixel per CSS pixel (480×360 on a 1280×720 screen),
//     clicks stream NAME, waits until its tile has played for 12 s at a steady height and
//     reports the tile's cap, the height received, the layer and the tallest height received
//     meanwhile; makes it fullscreen, waits
//     the same for the new session, and reports the same.
//   node browser.mjs first-frame URL NAME ours|demo
//     clicks producer NAME in our app, or in upstream's gstwebrtc-api demo page, and reports
//     the time from the click to the first video frame presented.
import { launchChromium } from "./chromium.mjs";

const [mode, url, name, arg4, arg5] = process.argv.slice(2);
const say = (obj) => console.log(JSON.stringify(obj));

const browser = await launchChromium();
const page = await browser.newPage(mode === "cap" || mode === "layers"
  ? { viewport: { width: 480, height: 360 }, screen: { width: 1280, height: 720 }, deviceScaleFactor: mode === "layers" ? 0.25 : 1 }
  : { viewport: { width: 1024, height: 768 } });
page.on("console", (m) => console.error(`[page] ${m.type()}: ${m.text()}`));
// The ICE candidates the page's peer connections gathered (what it signals), for `play`.
await page.addInitScript(() => {
  window.gatheredCandidates = [];
  const Native = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("icecandidate", (e) => {
        if (e.candidate?.candidate) window.gatheredCandidates.push(e.candidate.candidate);
      });
    }
  };
});
page.on("pageerror", (e) => console.error(`[page] error: ${e.message}`));

// Colours in a sample of the first tile's picture: a picture, not one colour.
const distinctColours = () => page.evaluate(() => {
  const v = document.querySelector(".tile video");
  const c = document.createElement("canvas");
  c.width = v.videoWidth; c.height = v.videoHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(v, 0, 0);
  const data = ctx.getImageData(0, 0, c.width, c.height).data;
  const colours = new Set();
  for (let i = 0; i < data.length && colours.size < 64; i += 4 * 97) {
    colours.add((data[i] >> 4) << 8 | (data[i + 1] >> 4) << 4 | (data[i + 2] >> 4));
  }
  return colours.size;
});

try {
  await page.goto(url);
  if (!(mode === "first-frame" && arg4 === "demo")) {
    await page.waitForFunction(() => document.querySelector("#status").dataset.state === "connected", null, { timeout: 20000 });
    say({ event: "connected", node: await page.textContent("#node") });
  }

  if (mode === "watch") {
    const button = page.locator("#producers button", { hasText: name });
    await button.first().waitFor({ timeout: 60000 });
    const clicked = Date.now();
    await button.first().click({ timeout: 60000 });
    const tile = page.locator(".tile").first();
    // Click to the first frame presented (polled every animation frame).
    await page.waitForFunction(() => {
      const v = document.querySelector(".tile video");
      return v && v.getVideoPlaybackQuality().totalVideoFrames > 0;
    }, null, { timeout: 60000, polling: "raf" });
    const clickToFirstFrameMs = Date.now() - clicked;
    await page.waitForFunction(() => {
      const t = document.querySelector(".tile");
      return t && Number(t.dataset.frames || 0) > 10 && Number(t.dataset.width || 0) > 0;
    }, null, { timeout: 60000 });
    const sample = () => page.evaluate(() => {
      const t = document.querySelector(".tile");
      const v = t.querySelector("video");
      return { frames: v.getVideoPlaybackQuality().totalVideoFrames, width: v.videoWidth, height: v.videoHeight };
    });
    const first = await sample();
    await page.waitForTimeout(1500);
    const second = await sample();
    const distinct = await distinctColours();
    if (arg4) await tile.locator("video").screenshot({ path: arg4 });
    const overlay = await tile.locator(".stats").textContent();
    say({ event: "playing", ...second, framesBefore: first.frames, distinctColours: distinct, overlay, clickToFirstFrameMs });

    const clicks = Number(arg5 || 0);
    if (clicks > 0) {
      await page.waitForFunction(() => document.querySelector(".tile")?.dataset.remoteControl === "on", null, { timeout: 20000 });
      const box = await tile.locator("video").boundingBox();
      for (let i = 0; i < clicks; i++) {
        await page.mouse.click(box.x + box.width * (0.2 + 0.06 * i), box.y + box.height / 2);
        await page.waitForTimeout(100);
      }
      say({ event: "clicked", clicks });
    }

    await page.waitForFunction((n) => ![...document.querySelectorAll("#producers button")].some((b) => b.textContent === n), name, { timeout: 120000 });
    say({ event: "removed", tileState: await tile.getAttribute("data-state") });

    if (process.argv[7] === "resume") {
      await page.waitForFunction(() => document.querySelector(".tile")?.dataset.state === "producer back", null, { timeout: 120000 });
      await tile.locator("button.resume").click();
      await page.waitForFunction(() => document.querySelector(".tile").dataset.state === "playing", null, { timeout: 60000 });
      const frames = () => page.evaluate(() => document.querySelector(".tile video").getVideoPlaybackQuality().totalVideoFrames);
      const f1 = await frames();
      await page.waitForTimeout(1500);
      const f2 = await frames();
      say({ event: "resumed", producerId: await tile.getAttribute("data-producer-id"), framesBefore: f1, frames: f2 });
    }
  } else if (mode === "stream") {
    const button = page.locator("#producers button", { hasText: name });
    await button.first().waitFor({ timeout: 60000 });
    const listed = await page.evaluate(() => [...document.querySelectorAll("#producers li")].map((li) => li.textContent));
    await button.first().click();
    const tile = page.locator(".tile").first();
    const playingOn = async (placements) => {
      await page.waitForFunction((n) => {
        const t = document.querySelector(".tile");
        return t && Number(t.dataset.placements || 0) >= n && t.dataset.state === "playing";
      }, placements, { timeout: 60000 });
      const frames = () => page.evaluate(() => document.querySelector(".tile video").getVideoPlaybackQuality().totalVideoFrames);
      const f1 = await frames();
      await page.waitForTimeout(1000);
      const f2 = await frames();
      return { member: await tile.getAttribute("data-member"), producerId: await tile.getAttribute("data-producer-id"), framesBefore: f1, frames: f2 };
    };
    say({ event: "playing", listed, ...(await playingOn(0)) });
    // Placed again: from the moment the tile saw its member go to frames flowing again.
    await page.waitForFunction(() => Number(document.querySelector(".tile")?.dataset.placements || 0) >= 1, null, { timeout: 120000, polling: 50 });
    const movedAt = Date.now();
    await page.waitForFunction(() => {
      const t = document.querySelector(".tile");
      return t.dataset.state === "playing" && Number(t.dataset.frames || 0) > 0;
    }, null, { timeout: 60000 });
    const back = await playingOn(1);
    say({ event: "placed-again", ...back, replacedToPlayingMs: Date.now() - movedAt });
  } else if (mode === "play") {
    const button = page.locator("#producers button", { hasText: name });
    await button.first().waitFor({ timeout: 60000 });
    await button.first().click();
    await page.waitForFunction(() => {
      const t = document.querySelector(".tile");
      return t && t.dataset.state === "playing" && Number(t.dataset.frames || 0) > 10;
    }, null, { timeout: 60000 });
    // What the page's peer connection received, read twice to see it still arriving.
    const received = () => page.evaluate(async () => {
      const tile = [...window.gwc.tiles.values()][0];
      const v = tile.video;
      const out = {
        member: tile.el.dataset.member,
        producerId: tile.el.dataset.producerId,
        frames: v.getVideoPlaybackQuality().totalVideoFrames,
        width: v.videoWidth,
        height: v.videoHeight,
        tracks: (v.srcObject?.getTracks() || []).map((t) => ({ kind: t.kind, state: t.readyState, muted: t.muted })),
        candidates: window.gatheredCandidates,
        inbound: {},
      };
      const pc = tile.session?.rtcPeerConnection;
      if (!pc) return out;
      const report = await pc.getStats();
      const byId = new Map();
      report.forEach((s) => byId.set(s.id, s));
      report.forEach((s) => {
        if (s.type === "inbound-rtp") {
          out.inbound[s.kind] = {
            codec: byId.get(s.codecId)?.mimeType,
            packets: s.packetsReceived,
            framesDecoded: s.framesDecoded,
          };
        } else if (s.type === "transport" && s.dtlsState === "connected") {
          const cert = byId.get(s.remoteCertificateId);
          const der = cert ? atob(cert.base64Certificate) : "";
          out.dtls = {
            cipher: s.dtlsCipher,
            srtpCipher: s.srtpCipher,
            fingerprintAlgorithm: cert?.fingerprintAlgorithm,
            remoteCertificateHex: [...der].map((c) => c.charCodeAt(0).toString(16).padStart(2, "0")).join(""),
          };
        }
      });
      return out;
    });
    const first = await received();
    await page.waitForTimeout(1500);
    const second = await received();
    const distinct = await distinctColours();
    say({ event: "played", before: first, after: second, distinctColours: distinct });
  } else if (mode === "first-frame") {
    const demo = arg4 === "demo";
    const button = demo
      ? page.locator("#remote-streams li div.button", { hasText: name })
      : page.locator("#producers button", { hasText: name });
    await button.first().waitFor({ timeout: 60000 });
    const clicked = Date.now();
    await button.first().click();
    await page.waitForFunction((demo) => {
      const v = document.querySelector(demo ? "#remote-streams li video" : ".tile video");
      return v && v.getVideoPlaybackQuality().totalVideoFrames > 0;
    }, demo, { timeout: 60000, polling: "raf" });
    say({ event: "first-frame", ms: Date.now() - clicked });
  } else if (mode === "cap") {
    const button = page.locator("#producers button", { hasText: name });
    await button.first().waitFor({ timeout: 60000 });
    await button.first().click();
    const tile = page.locator(".tile").first();
    await page.waitForFunction(() => document.querySelector(".tile")?.dataset.cap, null, { timeout: 20000 });
    const small = Number(await tile.getAttribute("data-cap"));
    const height = await tile.locator("video").evaluate((v) => v.getBoundingClientRect().height);
    say({ event: "tile", cap: small, height });
    await tile.locator("button.full").click();
    await page.waitForFunction((c) => document.fullscreenElement && Number(document.querySelector(".tile").dataset.cap) !== c, small, { timeout: 20000 });
    say({ event: "fullscreen", cap: Number(await tile.getAttribute("data-cap")) });
  } else if (mode === "layers") {
    const button = page.locator("#producers button", { hasText: name });
    await button.first().waitFor({ timeout: 60000 });
    await button.first().click();
    const tile = page.locator(".tile").first();
    // Playing a layer steadily: 12 s after playing starts (a forward relay starts a viewer
    // low and steps up after a stable period, docs/sfu.md), the received height the same over
    // 2 s of stats, frames rising.
    const settled = async (what) => {
      await page.waitForFunction(() => document.querySelector(".tile")?.dataset.state === "playing", null, { timeout: 60000 });
      const sample = () => tile.evaluate((t) => ({ cap: Number(t.dataset.cap), height: Number(t.dataset.height || 0),
        layer: t.dataset.layer, member: t.dataset.member, frames: Number(t.dataset.frames || 0) }));
      // the tallest picture received all along (the overlay's stats, every second)
      let tallest = 0;
      for (let i = 0; i < 12; i++) {
        tallest = Math.max(tallest, (await sample()).height);
        await page.waitForTimeout(1000);
      }
      let last = null;
      for (let i = 0; i < 60; i++) {
        const now = await sample();
        tallest = Math.max(tallest, now.height);
        if (last && now.height > 0 && now.height === last.height && now.frames > last.frames && now.layer === last.layer) {
          return say({ event: what, ...now, tallest });
        }
        last = now;
        await page.waitForTimeout(2000);
      }
      throw new Error(`${what}: never settled (${JSON.stringify(last)})`);
    };
    await settled("small");
    const before = await tile.getAttribute("data-cap");
    await tile.locator("button.full").click();
    await page.waitForFunction((c) => document.fullscreenElement && document.querySelector(".tile").dataset.cap !== c, before, { timeout: 20000 });
    await settled("fullscreen");
  } else if (mode === "publish") {
    await page.fill("#publish-name", name);
    await page.click("#publish button[value=camera]");
    await page.waitForFunction(() => document.body.dataset.publishing, null, { timeout: 20000 });
    say({ event: "publishing", state: await page.textContent("#publish-state") });
    await page.waitForTimeout(Number(arg4 || 20) * 1000);
    say({ event: "done", state: await page.textContent("#publish-state") });
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
} catch (e) {
  say({ event: "failed", error: String(e && e.message || e) });
  process.exitCode = 1;
} finally {
  await browser.close();
}
