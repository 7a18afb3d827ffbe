/**
 * The events of a migration (`--events`): the emitter, its JSON-lines writer, the
 * progress bar, and the schema they follow (docs/events.md).
 *
 * @module
 */

export { type DeviceRef, Events, type EventSubscriber, type MigrationEvent } from "./events.ts";
export { migrationEvents } from "./cli.ts";
export { JsonLinesWriter } from "./jsonl.ts";
export { ProgressBar } from "./progress_bar.ts";
export { EVENTS_SCHEMA_VERSION, validateEvent, validateEventLines } from "./schema.ts";
