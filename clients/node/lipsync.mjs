#!/usr/bin/env node
// Client for the Wav2Lip server's `POST /api/generate` and `POST /api/avatars`: Node >= 18 built-in
// fetch, FormData and Blob, no dependencies.
//
//   import { generate, registerAvatar } from "./lipsync.mjs";
//   const { mp4, meta } = await generate({ url: "http://127.0.0.1:8000", image, audio });
//   const { avatar_id } = await registerAvatar({ url, video, multipart: true });
//   const next = await generate({ url, avatarId: avatar_id, audio, startFrame: meta.end_frame });
//
//   node lipsync.mjs --url http://127.0.0.1:8000 --image face.jpg --audio speech.wav --out out.mp4
//   node lipsync.mjs --url http://127.0.0.1:8000 --register --video idle.mp4

import { readFile, writeFile } from "node:fs/promises";
import { realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const DEFAULT_RETRIES = 3; // extra attempts after a 503; each waits the server's Retry-After
export const MAX_RETRY_WAIT_S = 60; // a Retry-After larger than this is capped, so a retry stays bounded in time
const FINAL_503_CODES = new Set(["models_missing"]); // the IR is absent: waiting does not help

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
const OPTION_FIELDS = { fps: "fps", box: "box", pads: "pads", paste: "paste", loop: "loop", startFrame: "start_frame" };

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
      const why = e.cause?.code ?? e.cause?.message ?? e.message;
      throw new LipSyncError(`could not reach ${url}: ${why}`, { code: "network_error", cause: e });
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
 * POST `audio` and one avatar (`image` or `video` Buffer, or a registered `avatarId`) to
 * `${url}/api/generate`; resolves to `{mp4: Buffer, meta}` (meta: the JSON answer without the video,
 * with `end_frame`, the loop position to resume at). Options: fps, box, pads, paste, loop, startFrame;
 * `multipart` uploads files instead of base64 JSON. 503s are retried as `registerAvatar` does.
 */
export async function generate({ url, image, video, avatarId, audio, multipart = false, ...rest } = {}) {
  if (!url) throw new TypeError("generate: url is required");
  const [name, avatar] = oneOf("generate", { image, video, avatarId });
  if (!Buffer.isBuffer(audio) || audio.length === 0) throw new TypeError("generate: audio must be a non-empty Buffer");
  const files = name === "avatarId" ? { audio } : { [name]: avatar, audio };
  const fields = { ...(name === "avatarId" && { avatar_id: avatar }), ...optionFields(rest) };
  const resp = await post(endpoint(url, "api/generate"), { ...callOptions(rest), ...makeBody(files, fields, multipart) });
  const meta = await answer(resp, "video", "string");
  const mp4 = Buffer.from(meta.video, "base64");
  delete meta.video;
  return { mp4, meta };
}

const USAGE = `usage: node lipsync.mjs --url URL (--image FACE | --video CLIP | --avatar-id ID) --audio SPEECH --out OUT.mp4
                        [--fps N] [--box X1 Y1 X2 Y2] [--pads T B L R] [--paste box|feather]
                        [--loop pingpong|repeat|none] [--start-frame K] [--multipart] [--api-key KEY] [--retries N]
       node lipsync.mjs --url URL --register (--image FACE | --video CLIP) [--fps N] [--box …] [--pads …] [--multipart] …
  --register prints the avatar's record as JSON; --api-key defaults to $LIPSYNC_API_KEY`;

class UsageError extends Error {}

const VALUE_ARGS = {
  "--url": "url", "--image": "image", "--video": "video", "--avatar-id": "avatarId", "--audio": "audio", "--out": "out",
  "--api-key": "apiKey", "--paste": "paste", "--loop": "loop",
};
const NUMBER_ARGS = { "--fps": ["fps", false], "--retries": ["retries", true], "--start-frame": ["startFrame", true] }; // → [option, whole number]
const FLAG_ARGS = { "--register": "register", "--multipart": "multipart", "-h": "help", "--help": "help" };

const flagOf = (name) => Object.keys(VALUE_ARGS).find((flag) => VALUE_ARGS[flag] === name);

/** Usage errors of a parsed command line: exactly one avatar, and the files each mode needs (or refuses). */
function checkModes(opts) {
  const avatars = opts.register ? ["image", "video"] : ["image", "video", "avatarId"];
  if (avatars.filter((k) => opts[k]).length !== 1) throw new UsageError(`give exactly one of ${avatars.map(flagOf).join(", ")}`);
  const extra = opts.register ? ["avatarId", "audio", "out"].filter((k) => opts[k]) : [];
  if (extra.length) throw new UsageError(`--register takes no ${extra.map(flagOf).join(", ")}`);
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

/** Lip-sync: the MP4 to --out and one line about it. */
async function generateCommand(opts) {
  const t0 = performance.now();
  const kind = ["image", "video"].find((k) => opts[k]);
  const [avatar, audio] = await Promise.all([kind && readFile(opts[kind]), readFile(opts.audio)]);
  const { mp4, meta } = await generate({ ...opts, ...(kind && { [kind]: avatar }), audio, onRetry: onRetry(opts.retries) });
  await writeFile(opts.out, mp4);
  const s = ((performance.now() - t0) / 1000).toFixed(1);
  console.log(
    `wrote ${opts.out}: ${meta.frames} frames ${meta.width}x${meta.height} @ ${meta.fps} fps, ` +
      `${meta.duration_s} s, end frame ${meta.end_frame}, ${mp4.length} bytes in ${s} s (request_id ${meta.request_id})`,
  );
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
    await (opts.register ? registerCommand : generateCommand)(opts);
    return 0;
  } catch (e) {
    if (e instanceof LipSyncError) {
      const where = e.status ? `HTTP ${e.status}` : "no response";
      console.error(`error ${e.code} (${where}): ${e.message}${e.requestId ? ` [request_id ${e.requestId}]` : ""}`);
      return 1;
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
