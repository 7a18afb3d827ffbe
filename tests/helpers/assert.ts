// Tiny assertion helpers for the test suite (JSR's @std/assert is not reachable from
// our machines). Deep equality is node's isDeepStrictEqual; messages show both sides.

import { isDeepStrictEqual } from "node:util";

export class AssertionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AssertionError";
  }
}

function show(v: unknown): string {
  return Deno.inspect(v, { depth: 6, iterableLimit: 40, strAbbreviateSize: 400 });
}

function prefix(msg?: string): string {
  return msg ? `${msg}: ` : "";
}

export function assert(cond: unknown, msg = "assertion failed"): asserts cond {
  if (!cond) throw new AssertionError(msg);
}

export function fail(msg: string): never {
  throw new AssertionError(msg);
}

export function assertEquals<T>(actual: unknown, expected: T, msg?: string): asserts actual is T {
  if (!isDeepStrictEqual(actual, expected)) {
    throw new AssertionError(`${prefix(msg)}values differ\n  actual:   ${show(actual)}\n  expected: ${show(expected)}`);
  }
}

export function assertNotEquals(actual: unknown, expected: unknown, msg?: string): void {
  if (isDeepStrictEqual(actual, expected)) {
    throw new AssertionError(`${prefix(msg)}expected a value other than ${show(expected)}`);
  }
}

export function assertMatch(actual: string, re: RegExp, msg?: string): void {
  if (!re.test(actual)) throw new AssertionError(`${prefix(msg)}${show(actual)} does not match ${re}`);
}

export function assertStringIncludes(actual: string, part: string, msg?: string): void {
  if (!actual.includes(part)) throw new AssertionError(`${prefix(msg)}${show(actual)} does not include ${show(part)}`);
}

// deno-lint-ignore no-explicit-any
type ErrorClass<E extends Error> = abstract new (...args: any[]) => E;

function checkError<E extends Error>(
  e: unknown,
  cls: ErrorClass<E> | undefined,
  includes: string | undefined,
  msg: string | undefined,
): E {
  if (cls && !(e instanceof cls)) {
    throw new AssertionError(`${prefix(msg)}expected ${cls.name}, got ${show(e)}`);
  }
  if (!(e instanceof Error)) throw new AssertionError(`${prefix(msg)}expected an Error, got ${show(e)}`);
  if (includes !== undefined && !e.message.includes(includes)) {
    throw new AssertionError(`${prefix(msg)}error message ${show(e.message)} does not include ${show(includes)}`);
  }
  return e as E;
}

/** Runs fn, which must throw (an instance of cls, whose message includes `includes`); returns the error. */
export function assertThrows<E extends Error = Error>(
  fn: () => unknown,
  cls?: ErrorClass<E>,
  includes?: string,
  msg?: string,
): E {
  try {
    fn();
  } catch (e) {
    return checkError(e, cls, includes, msg);
  }
  throw new AssertionError(`${prefix(msg)}expected the function to throw`);
}

/** As assertThrows, for a promise-returning function. */
export async function assertRejects<E extends Error = Error>(
  fn: () => Promise<unknown>,
  cls?: ErrorClass<E>,
  includes?: string,
  msg?: string,
): Promise<E> {
  try {
    await fn();
  } catch (e) {
    return checkError(e, cls, includes, msg);
  }
  throw new AssertionError(`${prefix(msg)}expected the promise to reject`);
}
