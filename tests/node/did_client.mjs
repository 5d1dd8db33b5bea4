// A client of the D-ID-style routes written as such clients are: the browser's FormData (Node 20's global
// fetch, FormData and Blob), submit, poll /talk-status every 250 ms, fetch result_url. Only the base URL is ours.
//
//   node did_client.mjs <base-url> <face.png> <speech.wav> <out.mp4>
//
// Prints one JSON object: the submit answer, every status seen while polling, the last talk JSON.
import fs from "node:fs";

const [base, face, speech, out] = process.argv.slice(2);
const POLL_MS = 250;
const TIMEOUT_MS = 90_000;

const form = new FormData();
form.append("source_image", new Blob([fs.readFileSync(face)], { type: "image/png" }), "face.png");
form.append("audio_data", new Blob([fs.readFileSync(speech)], { type: "audio/wav" }), "speech.wav");
const submitted = await fetch(`${base}/generate-video`, { method: "POST", body: form });
if (!submitted.ok) throw new Error(`generate-video: ${submitted.status} ${await submitted.text()}`);
const created = await submitted.json();

const statuses = [];
let talk;
for (const start = Date.now(); ; ) {
  talk = await (await fetch(`${base}/talk-status/${created.id}`)).json();
  if (statuses.at(-1) !== talk.status) statuses.push(talk.status);
  if (talk.status === "done") break;
  if (talk.status === "error" || talk.status === "rejected") throw new Error(`talk failed: ${JSON.stringify(talk.error)}`);
  if (Date.now() - start > TIMEOUT_MS) throw new Error(`talk not done after ${TIMEOUT_MS} ms: ${JSON.stringify(talk)}`);
  await new Promise((resolve) => setTimeout(resolve, POLL_MS));
}
const video = await fetch(talk.result_url);
if (!video.ok || video.headers.get("content-type") !== "video/mp4") throw new Error(`result_url: ${video.status}`);
fs.writeFileSync(out, Buffer.from(await video.arrayBuffer()));
console.log(JSON.stringify({ created, statuses, talk }));
