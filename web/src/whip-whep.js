// A page for the standards door (docs/whip-whep.md), with the npm `whip-whep` clients:
// ?publish=NAME publishes the camera with WHIPClient, ?play=NAME plays with WHEPClient.
// What happens is in window.whipWhep (read by web/tests/whip-whep.mjs) and in #status.
import { WHIPClient } from "./whip-whep/whip.js";
import { WHEPClient } from "./whip-whep/whep.js";

const params = new URLSearchParams(location.search);
const token = params.get("token") || undefined;
const video = document.getElementById("video");
const state = (window.whipWhep = { started: performance.now(), frames: 0 });
const show = (text) => (document.getElementById("status").textContent = text);

async function publish(name) {
  const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  video.srcObject = stream;
  const pc = new RTCPeerConnection();
  for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: "sendonly" });
  await new WHIPClient().publish(pc, `${location.origin}/whip/${encodeURIComponent(name)}`, token);
  state.published = performance.now() - state.started;
  pc.addEventListener("connectionstatechange", () => (state.connection = pc.connectionState));
  show(`publishing ${name}`);
}

async function play(name) {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  const stream = new MediaStream();
  pc.ontrack = (e) => stream.addTrack(e.track);
  video.srcObject = stream;
  const count = () => {
    state.frames += 1;
    if (state.frames === 1) state.firstFrameMs = performance.now() - state.started;
    state.width = video.videoWidth;
    state.height = video.videoHeight;
    video.requestVideoFrameCallback(count);
  };
  video.requestVideoFrameCallback(count);
  await new WHEPClient().view(pc, `${location.origin}/whep/${encodeURIComponent(name)}`, token);
  show(`playing ${name}`);
}

const run = params.has("publish") ? publish(params.get("publish")) : play(params.get("play"));
run.catch((e) => {
  state.error = String(e);
  show(`failed: ${e}`);
});
