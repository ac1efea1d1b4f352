// What the client does on each ErrorResp code (issue 11, "lifecycle").
// Invariant: every ErrorCode maps to exactly one action; codes this client does
// not know (a newer server) reconnect with backoff.
import { ErrorCode } from "./gen/pgsat_pb.js";

export type ErrorAction =
  /** The token expired: pause, get a new token, send it on the same connection. */
  | "refresh"
  /** The replica cannot be resumed: clear it and start again with a snapshot. */
  | "resync"
  /** Transient: reconnect with backoff and resume from the last applied position. */
  | "reconnect"
  /** Stop and surface the error; retrying cannot help. */
  | "fatal";

export function errorAction(code: ErrorCode): ErrorAction {
  switch (code) {
    case ErrorCode.TOKEN_EXPIRED:
      return "refresh";
    case ErrorCode.BEHIND_WINDOW:
    case ErrorCode.RESYNC_REQUIRED:
      return "resync";
    case ErrorCode.AUTH_FAILED:
    case ErrorCode.USER_NOT_FOUND:
    case ErrorCode.USER_DELETED:
    case ErrorCode.PRINCIPAL_CHANGED:
    case ErrorCode.TABLE_NOT_READABLE:
      return "fatal";
    case ErrorCode.SLOW_CONSUMER:
    case ErrorCode.SHUTTING_DOWN:
    case ErrorCode.INTERNAL:
    case ErrorCode.AUTH_TIMEOUT:
    case ErrorCode.AUTH_REQUIRED:
    case ErrorCode.INVALID_REQUEST:
    case ErrorCode.FRAME_TOO_LARGE:
    case ErrorCode.REPLICATION_ALREADY_STARTED:
    case ErrorCode.REPLICATION_NOT_STARTED:
      return "reconnect";
    default:
      return "reconnect";
  }
}

/** The code's name (e.g. "TOKEN_EXPIRED"), or its number for an unknown code. */
export function errorCodeName(code: number): string {
  return ErrorCode[code] ?? String(code);
}
