// A client of the drop-in routes written the way the seed services' clients are: axios + form-data,
// files streamed from disk as multipart parts, the MP4 answer saved as it comes. Only the base URL is ours.
//
//   node drop_in_client.mjs <base-url> <face.png> <clip.mp4> <speech.wav> <out-dir>
//
// Writes <out-dir>/{sync,animation,cached}.mp4 and prints one JSON object: per call its status,
// Content-Type, X-Request-ID, and the JSON answer (cache-avatar) or the error JSON.
import fs from "node:fs";
import path from "node:path";
import axios from "axios";
import FormData from "form-data";

const [base, face, clip, speech, out] = process.argv.slice(2);
const AVATAR_NAME = "seed-client.avatar_1";

async function post(route, fields) {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) form.append(name, value);
  try {
    const res = await axios.post(base + route, form, { headers: form.getHeaders(), responseType: "arraybuffer" });
    return { status: res.status, type: res.headers["content-type"], requestId: res.headers["x-request-id"], data: res.data };
  } catch (err) {
    if (!err.response) throw err; // no answer at all: the test fails with this stack
    const { status, headers, data } = err.response;
    return { status, type: headers["content-type"], requestId: headers["x-request-id"], data };
  }
}

const results = {};
async function call(name, route, fields) {
  const { data, ...meta } = await post(route, fields);
  if (meta.type === "video/mp4") fs.writeFileSync(path.join(out, `${name}.mp4`), data);
  else meta.json = JSON.parse(Buffer.from(data).toString("utf8"));
  results[name] = meta;
}

const file = (p) => fs.createReadStream(p);
await call("sync", "/sync", { video: file(clip), audio: file(speech) });
await call("animation", "/v1/animation", { avatar: file(face), audio: file(speech), fps: "20" });
await call("cache", "/cache-avatar", { avatar: file(face), avatar_id: AVATAR_NAME });
await call("cached", "/v1/animation-with-cache", { avatar_id: AVATAR_NAME, audio: file(speech) });
await call("unknown", "/v1/animation-with-cache", { avatar_id: "nobody-cached-this", audio: file(speech) });
console.log(JSON.stringify(results));
