#!/usr/bin/env bash
# Click to first frame in headless Chromium, in paired rounds: our web app watching a
# shared-encoding producer-agent on our node, against upstream's gstwebrtc-api demo page
# (served as shipped in the npm package) on the stock gst-webrtc-signalling-server with the
# same producer-agent in webrtcsink's own per-consumer mode; and, for reference, our app on a
# per-consumer producer. Prints one line per round and the medians.
#
#   B=release-dir UPSTREAM=path/to/gst-webrtc-signalling-server ROUNDS=8 web/tests/first-frame.sh
#
# The demo page connects to port 8443 of its host: that port must be free.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${B:-${CARGO_TARGET_DIR:-/var/cache/gst-webrtc-cluster/target}/release}
UPSTREAM=${UPSTREAM:-/var/cache/gst-webrtc-cluster/upstream/bin/gst-webrtc-signalling-server}
ROUNDS=${ROUNDS:-8}
OURS=18601 DEMO_HTTP=18602
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
start() { "$@" >/dev/null 2>&1 & pids+=($!); }

start "$B/signalling-cluster" --host 127.0.0.1 --port "$OURS"
start env WEBRTCSINK_SIGNALLING_SERVER_LOG=warn "$UPSTREAM" --host 127.0.0.1 --port 8443
start python3 -m http.server "$DEMO_HTTP" --bind 127.0.0.1 --directory node_modules/gstwebrtc-api/dist
sleep 1
start "$B/producer-agent" --server "ws://127.0.0.1:$OURS" --name ff-shared --encoding shared
start "$B/producer-agent" --server "ws://127.0.0.1:$OURS" --name ff-per --encoding per-consumer
start "$B/producer-agent" --server ws://127.0.0.1:8443 --name ff-upstream
sleep 4

run() { # URL NAME ours|demo
  node tests/browser.mjs first-frame "$1" "$2" "$3" 2>/dev/null | sed -n 's/.*"first-frame","ms":\([0-9]*\).*/\1/p'
}
declare -A all
for r in $(seq "$ROUNDS"); do
  s=$(run "http://127.0.0.1:$OURS/" ff-shared ours)
  u=$(run "http://127.0.0.1:$DEMO_HTTP/" ff-upstream demo)
  p=$(run "http://127.0.0.1:$OURS/" ff-per ours)
  echo "round $r: ours shared ${s:-?} ms, upstream demo ${u:-?} ms, ours per-consumer ${p:-?} ms"
  all[shared]+="${s:-} " all[upstream]+="${u:-} " all[per]+="${p:-} "
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR]=$1} END {if (NR) print v[int((NR+1)/2)]; else print "?"}'; }
echo "medians: ours shared $(echo "${all[shared]}" | median) ms, upstream demo $(echo "${all[upstream]}" | median) ms, ours per-consumer $(echo "${all[per]}" | median) ms"
