// A barge-in: `generateStream` aborted by its AbortSignal once the first chunk of the MP4 has come.
// Run by tests/e2e/test_clients.py; uses the client as an application would (no dependencies).
//
//   node stream_abort.mjs <base-url> <face image> <speech audio>
//
// Prints one JSON object: the stream's info, the chunks read, and how reading the body ended.
import { readFile } from "node:fs/promises";
import { generateStream } from "../../clients/node/lipsync.mjs";

const [url, face, speech] = process.argv.slice(2);
const barge = new AbortController();
const { info, body } = await generateStream({ url, image: await readFile(face), audio: await readFile(speech), signal: barge.signal });
let chunks = 0;
let ended;
try {
  for await (const _ of body) {
    chunks += 1;
    barge.abort();
  }
  ended = { name: "completed" };
} catch (e) {
  ended = { name: e.name, message: e.message };
}
console.log(JSON.stringify({ info, chunks, ended }));
