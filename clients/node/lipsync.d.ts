// Types of lipsync.mjs. The server's data (options, answers) are in api.d.ts, generated from the
// server's declarations; this file types the client's own functions around them.

import type { Avatar, GenerateAnswer, Job, Options } from "./api.js";

export type { Alive, Avatar, AvatarList, Cached, GenerateAnswer, Health, Job, Options, Talk } from "./api.js";

/** Extra attempts after a 503; each waits the server's Retry-After. */
export declare const DEFAULT_RETRIES: number;
/** A Retry-After larger than this (seconds) is capped. */
export declare const MAX_RETRY_WAIT_S: number;
/** `waitJob`'s default polling interval, ms. */
export declare const JOB_POLL_MS: number;
/** The request options: the client's name → the server's field. */
export declare const OPTION_FIELDS: { readonly [K in keyof Required<Options>]: string };

/** An error response from the server (or the network): `status` 0 means no HTTP response. */
export declare class LipSyncError extends Error {
  constructor(
    message: string,
    init?: { status?: number; code?: string; requestId?: string | null; retryAfter?: number | null; cause?: unknown },
  );
  /** The HTTP status; 0: no response (`network_error`). */
  status: number;
  /** The server's stable error code, or the client's: `network_error`, `bad_response`, `stream_cut`, `http_<status>`. */
  code: string;
  /** The answer's X-Request-ID. */
  requestId: string | null;
  /** Seconds, from the Retry-After header of a 503. */
  retryAfter: number | null;
}

/** Seconds from a Retry-After header (delta-seconds or an HTTP date); null when absent or unreadable. */
export declare function parseRetryAfter(value: string | null | undefined, now?: number): number | null;

/** How to call (not what to ask): where, with which key, how many retries of a 503, how to stop. */
export interface CallOptions {
  /** The server's base URL; a path prefix (a proxy's /lipsync/) is kept. */
  url: string | URL;
  /** Sent as `Authorization: Bearer <key>`. */
  apiKey?: string;
  /** Sent as X-Request-ID. */
  requestId?: string;
  /** Extra attempts after a 503 (default DEFAULT_RETRIES). */
  retries?: number;
  /** Aborts the request, a wait before a retry, or a stream (barge-in). */
  signal?: AbortSignal;
  /** Called before each wait for a retry. */
  onRetry?: (error: LipSyncError, attempt: number, waitS: number) => void;
  /** Upload files as multipart/form-data instead of base64 JSON. */
  multipart?: boolean;
}

/** Exactly one avatar: an image or a video (non-empty Buffers), or a registered avatar's id or name. */
export type AvatarSource =
  | { image: Buffer; video?: never; avatarId?: never }
  | { video: Buffer; image?: never; avatarId?: never }
  | { avatarId: string; image?: never; video?: never };

/** A lip-sync request: one avatar, the speech (a non-empty Buffer) and the options. */
export type GenerateOptions = CallOptions & Options & AvatarSource & { audio: Buffer };

/** `generate`'s answer without the video: its properties, `end_frame` the loop position to resume at. */
export type GenerateMeta = Omit<GenerateAnswer, "video">;

/** A streamed answer's properties, from its headers (null when a header is absent). */
export interface StreamInfo {
  /** `video/mp4; codecs="avc1.…, mp4a.40.2"`: what a MediaSource needs. */
  mime_type: string | null;
  frames: number | null;
  duration_s: number | null;
  fps: number | null;
  face_box: number[] | null;
  end_frame: number | null;
  request_id: string | null;
}

/** POST /api/generate: the MP4 and its properties. */
export declare function generate(opts: GenerateOptions): Promise<{ mp4: Buffer; meta: GenerateMeta }>;

/** POST /api/generate, streamed: resolves when the answer starts; `body` errors with a LipSyncError `stream_cut` if the server cuts it. */
export declare function generateStream(opts: GenerateOptions): Promise<{ info: StreamInfo; body: ReadableStream<Uint8Array>; ttfbMs: number }>;

/** POST /api/avatars: an image or a video, and the options that shape its face boxes. */
export type RegisterOptions = CallOptions &
  Pick<Options, "pads" | "box" | "fps"> &
  ({ image: Buffer; video?: never } | { video: Buffer; image?: never });

/** The avatar's record; `created` true when registered now (201), false when already known (200). */
export declare function registerAvatar(opts: RegisterOptions): Promise<Avatar & { created: boolean }>;

/** POST /api/jobs: `generate`'s request as an async job, and a webhook for its end. */
export declare function submitJob(opts: GenerateOptions & { webhookUrl?: string }): Promise<Job>;

/** Which job to poll: `id` with `url`, or its `statusUrl`. */
export type WaitJobOptions = ({ url: string | URL; id: string; statusUrl?: never } | { statusUrl: string; url?: never; id?: never }) & {
  intervalMs?: number;
  onProgress?: (job: Job) => void;
  apiKey?: string;
  signal?: AbortSignal;
};

/** Poll a job until it ends: the done job, or a LipSyncError with the job's error code. */
export declare function waitJob(opts: WaitJobOptions): Promise<Job>;

/** A done job's MP4 (its `result_url`). */
export declare function downloadJob(job: Pick<Job, "result_url">, opts?: { apiKey?: string; signal?: AbortSignal }): Promise<Buffer>;

/** The CLI's arguments (without node and the script) as options; throws a usage error on a bad command line. */
export declare function parseArgs(argv: string[]): Record<string, unknown>;
