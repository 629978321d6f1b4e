// Builds dist/: our sources plus the stock gstwebrtc-api ES module, unchanged.
import { cpSync, mkdirSync, rmSync, readFileSync } from "node:fs";

const api = JSON.parse(readFileSync("node_modules/gstwebrtc-api/package.json", "utf8"));
rmSync("dist", { recursive: true, force: true });
mkdirSync("dist", { recursive: true });
cpSync("src", "dist", { recursive: true });
cpSync(`node_modules/gstwebrtc-api/${api.module}`, "dist/gstwebrtc-api.js");
console.log(`web/dist built with gstwebrtc-api ${api.version}`);
