/**
 * The driver conformance report (`vfio-mig check`): every arc of the v2 state machine,
 * data_fd behaviour, PRECOPY_INFO, a round trip; each check named by the public fix it
 * comes from.
 *
 * @module
 */

export { arcMismatches, arcPairs, type ArcResult, expectedArc, exploreArcs } from "./arcs.ts";
export { type CheckReport, type CheckResult, CHECKS, type CheckStatus, runChecks } from "./conformance.ts";
export { CheckSession } from "./session.ts";
