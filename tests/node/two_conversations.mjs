// Two conversations at once through one client module: two `generateStream` calls in flight together,
// each read to its end. Run by tests/e2e/test_clients.py; uses the client as an application would.
//
//   node two_conversations.mjs <base-url> <face image> <speech audio> <fps>
//
// Prints one JSON array: per conversation its request id, frames, bytes, and the wall-clock ms
// (Date.now()) of its first byte and of its end.
import { readFile } from "node:fs/promises";
import { generateStream } from "../../clients/node/lipsync.mjs";

const [url, face, speech, fps] = process.argv.slice(2);
const image = await readFile(face);
const audio = await readFile(speech);

async function converse() {
  const { info, body } = await generateStream({ url, image, audio, fps: Number(fps), retries: 0 });
  const firstByteAt = Date.now();
  let bytes = 0;
  for await (const chunk of body) bytes += chunk.length;
  return { requestId: info.request_id, frames: info.frames, bytes, firstByteAt, doneAt: Date.now() };
}

console.log(JSON.stringify(await Promise.all([converse(), converse()])));
