#!/usr/bin/env node
// Client for the Wav2Lip server's `POST /api/generate` and `POST /api/avatars`: Node >= 18 built-in
// fetch, FormData and Blob, no dependencies.
//
//   import { generate, registerAvatar } from "./lipsync.mjs";
//   const { mp4, meta } = await generate({ url: "http://127.0.0.1:8000", image, audio });
//   const { avatar_id } = await registerAvatar({ url, video, multipart: true });
//   const next = await generate({ url, avatarId: avatar_id, audio, startFrame: meta.end_frame });
//   const { info, body } = await generateStream({ url, avatarId: avatar_id, audio, signal }); // fMP4 as it is made
//   const job = await submitJob({ url, image, audio });                       // async: 202 and a job to poll
//   const done = await waitJob({ url, id: job.id, onProgress: (j) => console.log(j.progress) });
//   const mp4 = await downloadJob(done);
//
//   node lipsync.mjs --url http://127.0.0.1:8000 --image face.jpg --audio speech.wav --out out.mp4 [--stream | --async]
//   node lipsync.mjs --url http://127.0.0.1:8000 --register --video idle.mp4

import { readFile, rename, rm, writeFile } from "node:fs/promises";
import { createWriteStream, realpathSync } from "node:fs";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { fileURLToPath } from "node:url";

export const DEFAULT_RETRIES = 3; // extra attempts after a 503; each waits the server's Retry-After
export const MAX_RETRY_WAIT_S = 60; // a Retry-After larger than this is capped, so a retry stays bounded in time
const FINAL_503_CODES = new Set(["models_missing"]); // the IR is absent: waiting does not help
const STREAM_TYPE = "video/mp4"; // a streamed answer's Content-Type, before its `; codecs="…"`

/** An error response from the server (or the network): `status` 0 means no HTTP response. */
export class LipSyncError extends Error {
  constructor(message, { status = 0, code = "error", requestId = null, retryAfter = null, cause } = {}) {
    super(message, cause ? { cause } : undefined);
    this.name = "LipSyncError";
    this.status = status;
    this.code = code;
    this.requestId = requestId;
    this.retryAfter = retryAfter; // seconds, from the Retry-After header of a 503
  }
}

/** Seconds from a Retry-After header (delta-seconds or an HTTP date); null when absent or unreadable. */
export function parseRetryAfter(value, now = Date.now()) {
  if (value == null || value.trim() === "") return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - now) / 1000));
}

/** What went wrong below fetch: undici puts the socket's error (ECONNREFUSED, "other side closed") in `cause`. */
function why(e) {
  return e.cause?.code ?? e.cause?.message ?? e.message;
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

async function errorFrom(resp) {
  const requestId = resp.headers.get("x-request-id");
  const retryAfter = parseRetryAfter(resp.headers.get("retry-after"));
  const text = await resp.text();
  let error = null;
  try {
    error = JSON.parse(text)?.error ?? null;
  } catch {
    // not JSON: a proxy's HTML page, say; reported below with the start of the body
  }
  if (error && typeof error.code === "string") {
    return new LipSyncError(String(error.message ?? error.code), { status: resp.status, code: error.code, requestId, retryAfter });
  }
  const snippet = text.replace(/\s+/g, " ").trim().slice(0, 200);
  return new LipSyncError(`HTTP ${resp.status} ${resp.statusText}${snippet ? `: ${snippet}` : ""}`, {
    status: resp.status,
    code: `http_${resp.status}`,
    requestId,
    retryAfter,
  });
}

// The request options: the name here → the server's field, the same in JSON and multipart bodies.
export const OPTION_FIELDS = { fps: "fps", box: "box", pads: "pads", paste: "paste", loop: "loop", startFrame: "start_frame" };

function endpoint(url, path) {
  return new URL(path, String(url).replace(/\/*$/, "/")).href; // keeps a path prefix (a proxy's /lipsync/)
}

/** The one avatar of a request among `given` (name → value); a TypeError unless exactly one is set. */
function oneOf(fn, given) {
  const set = Object.entries(given).filter(([, v]) => v != null);
  if (set.length !== 1) throw new TypeError(`${fn}: give exactly one of ${Object.keys(given).join(", ")}`);
  const [name, value] = set[0];
  if (name !== "avatarId" && (!Buffer.isBuffer(value) || value.length === 0)) throw new TypeError(`${fn}: ${name} must be a non-empty Buffer`);
  if (name === "avatarId" && (typeof value !== "string" || value === "")) throw new TypeError(`${fn}: avatarId must be a non-empty string`);
  return [name, value];
}

/**
 * A request body: `files` (field → Buffer) as base64 JSON, or as file parts of multipart/form-data;
 * `fields` (field → value, null skipped) as JSON values or form text (lists as "a,b,c,d").
 */
function makeBody(files, fields, multipart) {
  const given = Object.entries(fields).filter(([, v]) => v != null);
  if (!multipart) {
    const json = Object.fromEntries([...Object.entries(files).map(([k, buf]) => [k, buf.toString("base64")]), ...given]);
    return { body: JSON.stringify(json), headers: { "Content-Type": "application/json" } };
  }
  const form = new FormData(); // fetch sets Content-Type with the boundary; a FormData can be sent again on a retry
  for (const [k, buf] of Object.entries(files)) form.append(k, new Blob([buf]), k);
  for (const [k, v] of given) form.append(k, Array.isArray(v) ? v.join(",") : String(v));
  return { body: form, headers: {} };
}

/** How to call (not what to ask): the settings `post` takes. */
function callOptions({ apiKey, requestId, retries, signal, onRetry }) {
  return { apiKey, requestId, retries, signal, onRetry };
}

/** The request options of `opts` under the server's field names. */
function optionFields(opts) {
  return Object.fromEntries(Object.entries(OPTION_FIELDS).map(([ours, theirs]) => [theirs, opts[ours]]));
}

/**
 * POST `body` to `url`; resolves to the first 2xx response. A 503 (busy, not_ready) is retried up to
 * `retries` times after its Retry-After (`onRetry(error, attempt, waitS)` before each wait); any
 * other error throws LipSyncError.
 */
async function post(url, { body, headers, apiKey, requestId, retries = DEFAULT_RETRIES, signal, onRetry }) {
  headers = { Accept: "application/json", ...headers };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  if (requestId) headers["X-Request-ID"] = requestId;
  for (let attempt = 0; ; attempt++) {
    let resp;
    try {
      resp = await fetch(url, { method: "POST", headers, body, signal });
    } catch (e) {
      if (signal?.aborted) throw e;
      throw new LipSyncError(`could not reach ${url}: ${why(e)}`, { code: "network_error", cause: e });
    }
    if (resp.ok) return resp;
    const err = await errorFrom(resp);
    if (resp.status !== 503 || FINAL_503_CODES.has(err.code) || attempt >= retries) throw err;
    const waitS = Math.min(err.retryAfter ?? 1, MAX_RETRY_WAIT_S);
    onRetry?.(err, attempt + 1, waitS);
    await sleep(waitS * 1000, signal);
  }
}

/** The JSON object of a 2xx response, which must have `key` of type `type`; else a LipSyncError "bad_response". */
async function answer(resp, key, type) {
  const fail = (message, cause) =>
    new LipSyncError(message, { status: resp.status, code: "bad_response", requestId: resp.headers.get("x-request-id"), cause });
  let obj;
  try {
    obj = await resp.json();
  } catch (e) {
    throw fail(`response is not JSON: ${e.message}`, e);
  }
  if (typeof obj?.[key] !== type) throw fail(`response JSON has no '${key}' ${type}`);
  return obj;
}

/**
 * POST an avatar (`image` or `video`, a Buffer) to `${url}/api/avatars`; resolves to its record
 * `{avatar_id, kind, width, height, frames, fps, duration_s, face_boxes, face_source, created_at}`
 * plus `created`: true when the server registered it now (201), false when it knew it (200).
 * `pads`, `box` and (for an image) `fps` shape the avatar; `multipart` uploads a file instead of base64 JSON.
 */
export async function registerAvatar({ url, image, video, pads, box, fps, multipart = false, ...call } = {}) {
  if (!url) throw new TypeError("registerAvatar: url is required");
  const [name, media] = oneOf("registerAvatar", { image, video });
  const resp = await post(endpoint(url, "api/avatars"), { ...callOptions(call), ...makeBody({ [name]: media }, { pads, box, fps }, multipart) });
  return { ...(await answer(resp, "avatar_id", "string")), created: resp.status === 201 };
}

/**
 * The one `/api/generate` request of both `generate` and `generateStream` (`fn`, for errors): the
 * arguments checked, the body built, posted; `stream` is the body's `stream` field (null: not sent).
 */
function postGenerate(fn, { url, image, video, avatarId, audio, multipart = false, ...rest }, stream = null, path = "api/generate", extra = {}) {
  if (!url) throw new TypeError(`${fn}: url is required`);
  const [name, avatar] = oneOf(fn, { image, video, avatarId });
  if (!Buffer.isBuffer(audio) || audio.length === 0) throw new TypeError(`${fn}: audio must be a non-empty Buffer`);
  const files = name === "avatarId" ? { audio } : { [name]: avatar, audio };
  const fields = { ...(name === "avatarId" && { avatar_id: avatar }), ...optionFields(rest), stream, ...extra };
  const { body, headers } = makeBody(files, fields, multipart);
  const accept = stream ? { Accept: `${STREAM_TYPE}, application/json` } : {}; // errors stay JSON
  return post(endpoint(url, path), { ...callOptions(rest), body, headers: { ...headers, ...accept } });
}

/**
 * POST `audio` and one avatar (`image` or `video` Buffer, or a registered `avatarId`) to
 * `${url}/api/generate`; resolves to `{mp4: Buffer, meta}` (meta: the JSON answer without the video,
 * with `end_frame`, the loop position to resume at). Options: fps, box, pads, paste, loop, startFrame;
 * `multipart` uploads files instead of base64 JSON. 503s are retried as `registerAvatar` does.
 */
export async function generate(opts = {}) {
  const resp = await postGenerate("generate", opts);
  const meta = await answer(resp, "video", "string");
  const mp4 = Buffer.from(meta.video, "base64");
  delete meta.video;
  return { mp4, meta };
}

/** A streamed answer's properties, from its headers: the names of `generate`'s `meta` (null when a header is absent). */
function streamInfo(resp) {
  const header = (name) => resp.headers.get(name);
  const number = (name) => (header(name) == null ? null : Number(header(name)));
  return {
    mime_type: header("content-type"), // video/mp4; codecs="avc1.…, mp4a.40.2": what a MediaSource needs
    frames: number("x-frames"),
    duration_s: number("x-duration"),
    fps: number("x-fps"),
    face_box: header("x-face-box")?.split(",").map(Number) ?? null,
    end_frame: number("x-end-frame"),
    request_id: header("x-request-id"),
  };
}

/** `body` (a web ReadableStream) whose failure before its end, the server cutting the stream, is a LipSyncError "stream_cut"; an abort by `signal` stays the abort. */
function cutAware(body, requestId, signal) {
  const reader = body.getReader();
  let bytes = 0;
  return new ReadableStream({
    async pull(controller) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (e) {
        if (signal?.aborted) throw e;
        throw new LipSyncError(`the stream was cut after ${bytes} bytes (${why(e)})`, { status: 200, code: "stream_cut", requestId, cause: e });
      }
      if (chunk.done) return controller.close();
      bytes += chunk.value.length;
      controller.enqueue(chunk.value);
    },
    cancel: (reason) => reader.cancel(reason),
  });
}

/**
 * `generate`, streamed: the server sends a fragmented MP4 as it makes the frames. Resolves when the
 * answer starts, to `{info, body, ttfbMs}`: `info` from the headers (`frames`, `duration_s`, `fps`,
 * `face_box`, `end_frame`, `request_id`, `mime_type` with the codecs), `body` a ReadableStream of the
 * MP4's bytes, `ttfbMs` the time from the call to the answer's headers. An error before the answer
 * rejects as `generate` does; a stream cut later errors `body` with a LipSyncError "stream_cut".
 * Aborting `signal` (barge-in) errors `body` with the abort's reason and stops the server's work.
 */
export async function generateStream(opts = {}) {
  const t0 = performance.now();
  const resp = await postGenerate("generateStream", opts, true);
  const ttfbMs = performance.now() - t0;
  const info = streamInfo(resp);
  if (!info.mime_type?.startsWith(STREAM_TYPE)) {
    await resp.body?.cancel();
    const message = `expected a streamed ${STREAM_TYPE}, got ${info.mime_type} (does the server stream?)`;
    throw new LipSyncError(message, { status: resp.status, code: "bad_response", requestId: info.request_id });
  }
  return { info, body: cutAware(resp.body, info.request_id, opts.signal), ttfbMs };
}

/**
 * Submit `generate`'s request as an async job (`POST ${url}/api/jobs`, optional `webhookUrl`); resolves
 * to the job `{id, status: "queued", progress, created_at, …, status_url, result_url}`. A full queue (503
 * queue_full) is retried after its Retry-After, as `generate` retries a busy server.
 */
export async function submitJob({ webhookUrl, ...opts } = {}) {
  const resp = await postGenerate("submitJob", opts, null, "api/jobs", { webhook_url: webhookUrl });
  return answer(resp, "id", "string");
}

/** GET `href` with the call's API key; a non-2xx answer is a LipSyncError. */
async function get(href, { apiKey, signal } = {}) {
  const headers = apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
  let resp;
  try {
    resp = await fetch(href, { headers, signal });
  } catch (e) {
    if (signal?.aborted) throw e;
    throw new LipSyncError(`could not reach ${href}: ${why(e)}`, { code: "network_error", cause: e });
  }
  if (!resp.ok) throw await errorFrom(resp);
  return resp;
}

export const JOB_POLL_MS = 500;
const TRANSIENT_CODES = new Set(["network_error", "busy", "store_unavailable", "not_ready", "http_502", "http_503", "http_504"]);

/**
 * Poll a job (`id` with `url`, or its `statusUrl`) every `intervalMs` until it ends; `onProgress(job)` on each
 * answer. Resolves to the done job; rejects with a LipSyncError carrying the job's error code when it ends in
 * "error" or "cancelled". A server or store briefly unavailable (a replica restarting) is polled again.
 */
export async function waitJob({ url, id, statusUrl, intervalMs = JOB_POLL_MS, onProgress, apiKey, signal } = {}) {
  const href = statusUrl ?? endpoint(url, `api/jobs/${id}`);
  for (;;) {
    let job = null;
    try {
      job = await (await get(href, { apiKey, signal })).json();
    } catch (e) {
      if (!(e instanceof LipSyncError) || !TRANSIENT_CODES.has(e.code)) throw e;
    }
    if (job) {
      onProgress?.(job);
      if (job.status === "done") return job;
      if (job.status === "error" || job.status === "cancelled") {
        throw new LipSyncError(`job ${job.id} ${job.status}: ${job.error?.message ?? ""}`, { status: 200, code: job.error?.code ?? job.status });
      }
    }
    await sleep(intervalMs, signal);
  }
}

/** A done job's MP4 (its `result_url`) as a Buffer. */
export async function downloadJob(job, { apiKey, signal } = {}) {
  return Buffer.from(await (await get(job.result_url, { apiKey, signal })).arrayBuffer());
}

const USAGE = `usage: node lipsync.mjs --url URL (--image FACE | --video CLIP | --avatar-id ID) --audio SPEECH --out OUT.mp4
                        [--fps N] [--box X1 Y1 X2 Y2] [--pads T B L R] [--paste box|feather]
                        [--loop pingpong|repeat|none] [--start-frame K] [--stream | --async] [--multipart] [--api-key KEY] [--retries N]
       node lipsync.mjs --url URL --register (--image FACE | --video CLIP) [--fps N] [--box …] [--pads …] [--multipart] …
  --stream writes OUT.mp4 as the server makes it (a fragmented MP4, through OUT.mp4.part);
  --async submits a job, shows its progress, then downloads OUT.mp4;
  --register prints the avatar's record as JSON; --api-key defaults to $LIPSYNC_API_KEY`;

class UsageError extends Error {}

const VALUE_ARGS = {
  "--url": "url", "--image": "image", "--video": "video", "--avatar-id": "avatarId", "--audio": "audio", "--out": "out",
  "--api-key": "apiKey", "--paste": "paste", "--loop": "loop",
};
const NUMBER_ARGS = { "--fps": ["fps", false], "--retries": ["retries", true], "--start-frame": ["startFrame", true] }; // → [option, whole number]
const FLAG_ARGS = { "--register": "register", "--stream": "stream", "--async": "async", "--multipart": "multipart", "-h": "help", "--help": "help" };

const NAMED_ARGS = { ...VALUE_ARGS, ...FLAG_ARGS };
const flagOf = (name) => Object.keys(NAMED_ARGS).find((flag) => NAMED_ARGS[flag] === name);

/** Usage errors of a parsed command line: exactly one avatar, and the files each mode needs (or refuses). */
function checkModes(opts) {
  const avatars = opts.register ? ["image", "video"] : ["image", "video", "avatarId"];
  if (avatars.filter((k) => opts[k]).length !== 1) throw new UsageError(`give exactly one of ${avatars.map(flagOf).join(", ")}`);
  const extra = opts.register ? ["avatarId", "audio", "out", "stream", "async"].filter((k) => opts[k]) : [];
  if (extra.length) throw new UsageError(`--register takes no ${extra.map(flagOf).join(", ")}`);
  if (opts.stream && opts.async) throw new UsageError("give --stream or --async, not both");
  for (const name of opts.register ? ["url"] : ["url", "audio", "out"]) {
    if (!opts[name]) throw new UsageError(`${flagOf(name)} is required`);
  }
}

/** argv (without node and the script) → options; --box and --pads take 4 integers (or "a,b,c,d"). */
export function parseArgs(argv) {
  const opts = { retries: DEFAULT_RETRIES, apiKey: process.env.LIPSYNC_API_KEY };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new UsageError(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg in FLAG_ARGS) opts[FLAG_ARGS[arg]] = true;
    else if (arg in VALUE_ARGS) opts[VALUE_ARGS[arg]] = value();
    else if (arg in NUMBER_ARGS) {
      const [name, whole] = NUMBER_ARGS[arg];
      const raw = value();
      const n = Number(raw);
      if (raw.trim() === "" || !Number.isFinite(n) || n < 0 || (whole && !Number.isInteger(n))) {
        throw new UsageError(`${arg} must be a ${whole ? "whole " : ""}number >= 0, got ${JSON.stringify(raw)}`);
      }
      opts[name] = n;
    } else if (arg === "--box" || arg === "--pads") {
      const first = value();
      const parts = first.includes(",") ? first.split(",") : [first, ...argv.slice(i + 1, i + 4)];
      if (!first.includes(",")) i += 3;
      const ints = parts.map(Number);
      if (ints.length !== 4 || !ints.every(Number.isInteger)) throw new UsageError(`${arg} needs 4 integers, got ${parts.join(" ")}`);
      opts[arg.slice(2)] = ints;
    } else throw new UsageError(`unknown argument ${JSON.stringify(arg)}`);
  }
  if (!opts.help) checkModes(opts);
  return opts;
}

const onRetry = (retries) => (err, attempt, waitS) => console.error(`server answered 503 ${err.code}; retry ${attempt}/${retries} in ${waitS} s`);

/** --register: the avatar's record (with `created`) as JSON on stdout. */
async function registerCommand(opts) {
  const kind = opts.image ? "image" : "video";
  const record = await registerAvatar({ ...opts, [kind]: await readFile(opts[kind]), onRetry: onRetry(opts.retries) });
  console.log(JSON.stringify(record));
}

/** The options of a generate call from the command line: the avatar's and the audio's files read. */
async function generateOptions(opts) {
  const kind = ["image", "video"].find((k) => opts[k]);
  const [avatar, audio] = await Promise.all([kind && readFile(opts[kind]), readFile(opts.audio)]);
  return { ...opts, ...(kind && { [kind]: avatar }), audio, onRetry: onRetry(opts.retries) };
}

const seconds = (ms) => (ms / 1000).toFixed(1);

/** Lip-sync: the MP4 to --out and one line about it. */
async function generateCommand(opts) {
  const t0 = performance.now();
  const { mp4, meta } = await generate(await generateOptions(opts));
  await writeFile(opts.out, mp4);
  console.log(
    `wrote ${opts.out}: ${meta.frames} frames ${meta.width}x${meta.height} @ ${meta.fps} fps, ` +
      `${meta.duration_s} s, end frame ${meta.end_frame}, ${mp4.length} bytes in ${seconds(performance.now() - t0)} s (request_id ${meta.request_id})`,
  );
}

/**
 * --stream: the MP4 written to --out as its bytes arrive and one line about it. The bytes go to
 * OUT.part, renamed to OUT once the stream has ended; a cut or interrupted (Ctrl-C) stream deletes it.
 */
async function streamCommand(opts) {
  const t0 = performance.now();
  const interrupt = new AbortController(); // Ctrl-C: close the stream (the server stops) rather than die with OUT.part
  process.once("SIGINT", () => interrupt.abort());
  const { info, body } = await generateStream({ ...(await generateOptions(opts)), signal: interrupt.signal });
  const part = `${opts.out}.part`;
  let firstByteMs = null;
  let bytes = 0;
  async function* counted(chunks) {
    for await (const chunk of chunks) {
      firstByteMs ??= performance.now() - t0;
      bytes += chunk.length;
      yield chunk;
    }
  }
  try {
    await pipeline(Readable.fromWeb(body), counted, createWriteStream(part));
  } catch (e) {
    await rm(part, { force: true });
    if (e instanceof LipSyncError) e.message += `; ${opts.out} not written`;
    throw e;
  }
  await rename(part, opts.out);
  console.log(
    `streamed ${opts.out}: ${info.frames} frames @ ${info.fps} fps, ${info.duration_s} s, end frame ${info.end_frame}, ${bytes} bytes; ` +
      `first byte after ${seconds(firstByteMs)} s, total ${seconds(performance.now() - t0)} s (request_id ${info.request_id})`,
  );
}

/** --async: submit a job, one progress line per change on stderr, the MP4 to --out when done. */
async function asyncCommand(opts) {
  const t0 = performance.now();
  const job = await submitJob(await generateOptions(opts));
  console.error(`job ${job.id} queued (${job.status_url})`);
  let shown = null;
  const onProgress = (j) => {
    const line = `job ${j.id}: ${j.status} ${Math.round(j.progress * 100)}%`;
    if (line !== shown) console.error((shown = line));
  };
  const done = await waitJob({ statusUrl: job.status_url, onProgress, apiKey: opts.apiKey });
  const mp4 = await downloadJob(done, { apiKey: opts.apiKey });
  await writeFile(opts.out, mp4);
  console.log(`wrote ${opts.out}: job ${done.id} done, ${mp4.length} bytes in ${seconds(performance.now() - t0)} s (attempts ${done.attempts})`);
}

async function main(argv) {
  let opts;
  try {
    opts = parseArgs(argv);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`${e.message}\n${USAGE}`);
    return 2;
  }
  if (opts.help) {
    console.log(USAGE);
    return 0;
  }
  try {
    await (opts.register ? registerCommand : opts.stream ? streamCommand : opts.async ? asyncCommand : generateCommand)(opts);
    return 0;
  } catch (e) {
    if (e instanceof LipSyncError) {
      const where = e.status ? `HTTP ${e.status}` : "no response";
      console.error(`error ${e.code} (${where}): ${e.message}${e.requestId ? ` [request_id ${e.requestId}]` : ""}`);
      return 1;
    }
    if (e.name === "AbortError") {
      console.error("interrupted");
      return 130; // 128 + SIGINT, as a shell reports a process ended by Ctrl-C
    }
    if (e.code === "ENOENT" || e.code === "EISDIR" || e.code === "EACCES") {
      console.error(`error ${e.code}: ${e.message}`);
      return 1;
    }
    throw e;
  }
}

function isMain() {
  try {
    return process.argv[1] && realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) {
  process.exitCode = await main(process.argv.slice(2));
}
