// The README's "Library" example, run as written (only /tmp/ and ./mod.ts are pointed at
// a temporary folder and this checkout): a new user's first use of the library.

import { assert, assertEquals, assertStringIncludes } from "../helpers/assert.ts";
import { BASE_ENV, CLI, DENO, ROOT } from "../helpers/proc.ts";

async function run(args: string[], cwd?: string) {
  const out = await new Deno.Command(DENO, { args, env: BASE_ENV, cwd, stdin: "null" }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** The first ```ts block after a heading. */
function codeAfter(markdown: string, heading: string): string {
  const at = markdown.indexOf(`\n${heading}\n`);
  assert(at >= 0, `README has a "${heading}" section`);
  const m = /```ts\n([\s\S]*?)```/.exec(markdown.slice(at));
  assert(m, `a ts code block under "${heading}"`);
  return m[1];
}

Deno.test("README Library example: open two devices by spec, save one to a file, load it into the other", async () => {
  const t = await Deno.makeTempDir({ prefix: "vfio-mig-lib-" });
  try {
    const readme = await Deno.readTextFile(`${ROOT}README.md`);
    // The example's /tmp paths first: the checkout itself may be under /tmp.
    const code = codeAfter(readme, "## Library")
      .replaceAll("/tmp/", `${t}/`)
      .replaceAll('"./mod.ts"', JSON.stringify(`${ROOT}mod.ts`));
    // The devices, as the README's sentence before the example creates them.
    for (const [dev, seed] of [["a", "1"], ["b", "2"]]) {
      const r = await run([
        "run",
        "--allow-ffi",
        CLI,
        "sim",
        "create",
        `${t}/${dev}`,
        "--model",
        "mtty-2",
        "--seed",
        seed,
      ]);
      assertEquals(r.code, 0, r.stderr);
    }
    const before = await run(["run", "--allow-ffi", CLI, "sim", "compare", `${t}/a`, `${t}/b`]);
    assertEquals(before.code, 1, "the two devices start with different state");
    await Deno.writeTextFile(`${t}/example.ts`, code);
    const r = await run(["run", "--allow-ffi", `${t}/example.ts`], t);
    assertEquals(r.code, 0, `the example runs: ${r.stderr}`);
    assertStringIncludes(r.stdout, "a is STOP, b is RUNNING");
    const after = await run(["run", "--allow-ffi", CLI, "sim", "compare", `${t}/a`, `${t}/b`]);
    assertEquals(after.code, 0, `b holds a's state: ${after.stdout}${after.stderr}`);
  } finally {
    await Deno.remove(t, { recursive: true });
  }
});

Deno.test("mod.ts is the front door: the first-use set, with a @module doc whose @example runs", async () => {
  const mod = await import("../../mod.ts");
  assertEquals(Object.keys(mod).sort(), [
    "Cancellation",
    "DeviceBusyError",
    "EXIT",
    "StreamError",
    "SysError",
    "TcpClient",
    "TcpServerConn",
    "TcpSink",
    "TcpSource",
    "VERSION",
    "VfioDevice",
    "VfioMigError",
    "defaultDeviceSpec",
    "describeError",
    "load",
    "loadBackendsFor",
    "openDevice",
    "openSink",
    "openSource",
    "openStreamSource",
    "save",
    "systemFor",
  ]);
  // deno test --doc runs the ```ts blocks of the JSDoc: mod.ts's @example and ./sim's.
  const r = await run(
    ["test", "--doc", "--allow-ffi", "--allow-read", "--allow-write", "--allow-env", "mod.ts", "src/sim/mod.ts"],
    ROOT,
  );
  assertEquals(r.code, 0, `the @examples run: ${r.stdout}${r.stderr}`);
  assertStringIncludes(r.stdout, "2 passed");
});

Deno.test("every sub-path of deno.json exports is an entry file that imports, with what the README names", async () => {
  const exports: Record<string, string> = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`)).exports;
  const expected: Record<string, string[]> = {
    ".": ["openDevice", "save", "load"],
    "./device": ["borrowDevice", "execWithDeviceFd", "listDevices", "describeDevice", "migrationControl"],
    "./migrate": ["chooseProtocol", "readConfigState", "restoreConfigState"],
    "./uapi": ["uapi", "libc", "DeviceState", "MigrationV2", "MigrationV1", "getRegionInfo"],
    "./stream": ["StreamReader", "StreamWriter", "streamFormat"],
    "./inspect": ["inspectStream", "inspectQemuStream"],
    "./events": ["Events", "JsonLinesWriter", "ProgressBar", "validateEvent"],
    "./report": ["readEventsFile", "renderSvg", "renderHtml"],
    "./check": ["runChecks", "CHECKS", "exploreArcs"],
    "./qemu": ["QemuStreamParser", "qemuLoadReader", "spliceQemuStream"],
    "./sim": ["SimKernel", "SimStore", "MODEL_NAMES"],
  };
  assertEquals(Object.keys(exports).sort(), Object.keys(expected).sort());
  const readme = await Deno.readTextFile(`${ROOT}README.md`);
  for (const [sub, file] of Object.entries(exports)) {
    const m = await import(new URL(file, `file://${ROOT}`).href);
    for (const name of expected[sub]) assert(name in m, `${sub} (${file}) exports ${name}`);
    if (sub !== ".") assertStringIncludes(readme, `| \`${sub}\``, `the README's Library section names ${sub}`);
  }
});
