// Builds dist/: our sources plus the stock gstwebrtc-api ES module and the npm whip-whep
// clients, unchanged.
import { cpSync, mkdirSync, rmSync, readFileSync } from "node:fs";

const api = JSON.parse(readFileSync("node_modules/gstwebrtc-api/package.json", "utf8"));
rmSync("dist", { recursive: true, force: true });
mkdirSync("dist", { recursive: true });
cpSync("src", "dist", { recursive: true });
cpSync(`node_modules/gstwebrtc-api/${api.module}`, "dist/gstwebrtc-api.js");
// The npm whip-whep clients, unchanged, for whip-whep.html (docs/whip-whep.md).
mkdirSync("dist/whip-whep", { recursive: true });
for (const file of ["whip.js", "whep.js"]) cpSync(`node_modules/whip-whep/${file}`, `dist/whip-whep/${file}`);
console.log(`web/dist built with gstwebrtc-api ${api.version}`);
