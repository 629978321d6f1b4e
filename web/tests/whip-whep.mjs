// Drives Debian's Chromium, headless, on the node's whip-whep.html (the npm whip-whep
// clients), for tests/whip.rs. Prints one JSON object per line on stdout.
//
//   node whip-whep.mjs publish URL NAME [TOKEN]
//     publishes the fake camera and microphone to URL/whip/NAME with WHIPClient, reports
//     {"event":"published"} with the time the POST took, then keeps publishing until killed.
//   node whip-whep.mjs play URL NAME [TOKEN]
//     plays URL/whep/NAME with WHEPClient and reports {"event":"playing"} with the video's
//     size, the frames presented and the time from the page's start to the first frame, once
//     30 frames were presented, then {"event":"frames"} once 30 more were.
import { launchChromium } from "./chromium.mjs";

const [mode, url, name, token] = process.argv.slice(2);
const say = (obj) => console.log(JSON.stringify(obj));
const browser = await launchChromium();
const page = await browser.newPage();
page.on("console", (m) => console.error(`[page] ${m.type()}: ${m.text()}`));
page.on("pageerror", (e) => console.error(`[page] error: ${e.message}`));
const query = new URLSearchParams({ [mode]: name, ...(token ? { token } : {}) });
await page.goto(`${url}/whip-whep.html?${query}`);
const state = () => page.evaluate(() => window.whipWhep);
const until = async (what, ok) => {
  for (;;) {
    const s = await state();
    if (s?.error) {
      say({ event: "failed", error: s.error });
      await browser.close();
      process.exit(1);
    }
    if (s && ok(s)) return s;
    await new Promise((r) => setTimeout(r, 100));
  }
};
if (mode === "publish") {
  const s = await until("published", (s) => s.published !== undefined);
  say({ event: "published", postMs: Math.round(s.published) });
  await new Promise(() => {}); // publishing until killed
} else {
  const s = await until("playing", (s) => s.frames >= 30);
  say({ event: "playing", width: s.width, height: s.height, frames: s.frames, firstFrameMs: Math.round(s.firstFrameMs) });
  const more = await until("frames", (t) => t.frames >= s.frames + 30);
  say({ event: "frames", frames: more.frames });
  await browser.close();
}
