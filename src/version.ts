// Kept equal to deno.json's "version" (tests/cli/cli_test.ts checks it).
export const VERSION = "0.1.0";
