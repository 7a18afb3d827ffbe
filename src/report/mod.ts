/**
 * Drawing an events file (`save`/`load --events`) as an SVG picture or an HTML page
 * (`vfio-mig report`).
 *
 * @module
 */

export { readEventsFile, type ReportModel } from "./model.ts";
export { renderSvg } from "./svg.ts";
export { renderHtml } from "./html.ts";
