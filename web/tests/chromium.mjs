// Debian's Chromium, headless, through playwright-core, as every browser test drives it: a
// fake camera and microphone, media permission granted, real host candidates unless
// BROWSER_MDNS=1 (GStreamer cannot resolve Chromium's mDNS names).
import { chromium } from "playwright-core";

export function launchChromium() {
  const mdns = process.env.BROWSER_MDNS === "1";
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run",
      "--use-fake-device-for-media-stream",
      // The fake UI grants media permission, and with it Chromium shows its real addresses.
      ...(mdns ? [] : ["--use-fake-ui-for-media-stream"]),
      "--autoplay-policy=no-user-gesture-required",
      `--${mdns ? "enable" : "disable"}-features=WebRtcHideLocalIpsWithMdns`,
    ],
  });
}
