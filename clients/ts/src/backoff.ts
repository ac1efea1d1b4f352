// Reconnect delays: exponential backoff with jitter.
// Invariant: the delay for attempt n lies in
// [base(n) * (1 - jitter), base(n)] where base(n) = min(maxMs, initialMs * multiplier^n),
// so it never exceeds maxMs and never drops below (1 - jitter) of the base.

export interface BackoffOptions {
  /** First delay, ms (default 500). */
  initialMs?: number;
  /** Largest delay, ms (default 30 000). */
  maxMs?: number;
  /** Growth per attempt (default 2). */
  multiplier?: number;
  /** Fraction of the delay that is random, 0..1 (default 0.5). */
  jitter?: number;
}

export const DEFAULT_BACKOFF: Required<BackoffOptions> = {
  initialMs: 500,
  maxMs: 30_000,
  multiplier: 2,
  jitter: 0.5,
};

/** The delay before reconnect attempt `attempt` (0 = first retry); `random` returns [0, 1). */
export function backoffDelay(attempt: number, opts: BackoffOptions = {}, random: () => number = Math.random): number {
  const o = { ...DEFAULT_BACKOFF, ...opts };
  const jitter = Math.min(1, Math.max(0, o.jitter));
  const initial = Math.max(0, o.initialMs);
  const max = Math.max(initial, o.maxMs);
  const exp = initial * Math.pow(Math.max(1, o.multiplier), Math.max(0, attempt));
  const base = Math.min(max, Number.isFinite(exp) ? exp : max);
  return base * (1 - jitter * random());
}
