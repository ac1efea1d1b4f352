import { describe, expect, it } from "vitest";
import { backoffDelay, DEFAULT_BACKOFF } from "../src/backoff.js";

describe("backoff", () => {
  it("grows exponentially up to maxMs, with the jitter taking at most its fraction off", () => {
    const o = { initialMs: 100, maxMs: 5_000, multiplier: 2, jitter: 0.5 };
    for (let attempt = 0; attempt < 12; attempt++) {
      const base = Math.min(5_000, 100 * 2 ** attempt);
      expect(backoffDelay(attempt, o, () => 0)).toBe(base);
      expect(backoffDelay(attempt, o, () => 0.999999)).toBeCloseTo(base * 0.5, 1);
      for (let i = 0; i < 50; i++) {
        const d = backoffDelay(attempt, o);
        expect(d).toBeGreaterThan(base * 0.5 - 1e-9);
        expect(d).toBeLessThanOrEqual(base);
      }
    }
  });

  it("spreads delays (jitter is random)", () => {
    const seen = new Set<number>();
    for (let i = 0; i < 20; i++) seen.add(backoffDelay(3, {}));
    expect(seen.size).toBeGreaterThan(1);
  });

  it("never exceeds maxMs, even for huge attempt counts", () => {
    expect(backoffDelay(10_000, {}, () => 0)).toBe(DEFAULT_BACKOFF.maxMs);
    expect(backoffDelay(2000, { multiplier: 10 }, () => 0)).toBe(DEFAULT_BACKOFF.maxMs);
  });

  it("clamps nonsense options (jitter outside 0..1, maxMs below initialMs)", () => {
    expect(backoffDelay(0, { jitter: 3, initialMs: 100 }, () => 0.5)).toBe(50);
    expect(backoffDelay(0, { jitter: -1, initialMs: 100 }, () => 0.5)).toBe(100);
    expect(backoffDelay(5, { initialMs: 100, maxMs: 10 }, () => 0)).toBe(100);
  });
});
