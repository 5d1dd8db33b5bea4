import { readFile, writeFile } from "node:fs/promises";
import { downloadJob, generate, generateStream, LipSyncError, registerAvatar, submitJob, waitJob } from "wav2lip-lipsync-client";

const url = process.env.LIPSYNC_URL ?? "http://127.0.0.1:8000";
const image = await readFile("test_assets/astronaut.jpg");
const audio = await readFile("test_assets/speech.wav");

// the MP4 and its properties (frames, end_frame, timings_ms, …); options as in the API: fps, pads, box, paste, loop, startFrame
const { mp4, meta } = await generate({ url, image, audio, paste: "feather" });
await writeFile("out.mp4", mp4);

// streamed: the same arguments (and a signal to stop it); the fragmented MP4 as it comes, to a file, a MediaSource, a socket
const { info, body } = await generateStream({ url, image, audio });
let streamed = 0;
for await (const chunk of body) streamed += chunk.length;
console.log(`streamed ${info.frames} frames, ${streamed} bytes`);

// a video avatar registered once, then used by id; the next clip starts where the last one ended
const avatar = await registerAvatar({ url, video: await readFile("idle.mp4"), multipart: true });
const reply = await generate({ url, avatarId: avatar.avatar_id, audio, startFrame: meta.end_frame, multipart: true });
console.log(`${avatar.kind} avatar ${avatar.avatar_id}: ${reply.meta.frames} frames`);

// an async job: submitted, polled, downloaded
const job = await submitJob({ url, image, audio });
const done = await waitJob({ url, id: job.id, onProgress: (j) => console.log(j.status, j.progress) });
await writeFile("job.mp4", await downloadJob(done));

try {
  await generate({ url, avatarId: "no-such-avatar", audio });
} catch (e) {
  if (!(e instanceof LipSyncError)) throw e;
  console.log(e.status, e.code, e.requestId); // 404 avatar_not_found <the X-Request-ID>
}
