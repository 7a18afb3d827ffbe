// A PCI function's identity, as its configuration space header states it (PCI Local Bus
// Specification 3.0, 6.2.1; Linux include/uapi/linux/pci_regs.h PCI_VENDOR_ID ..
// PCI_SUBSYSTEM_ID). A leaf module: the device layer, the simulator's models and the
// stream code all use it, and it imports nothing.

/** The ids a stream records and a load compares (all numbers, as the header holds them). */
export interface PciIdentity {
  vendor: number;
  device: number;
  subsystemVendor: number;
  subsystemDevice: number;
  /** The 24-bit class code: base class << 16 | sub-class << 8 | programming interface. */
  classCode: number;
  revision: number;
}

/**
 * The identity in the first bytes of a config space (little-endian, as PCI stores it):
 * vendor at 0x00, device 0x02, revision 0x08, class 0x09..0x0b, subsystem vendor and id
 * at 0x2c and 0x2e (0 when `cfg` is shorter than the 0x30-byte type 0 header's start).
 * `cfg` must hold at least 12 bytes (else RangeError).
 */
export function pciIdentityFromConfig(cfg: Uint8Array): PciIdentity {
  const v = new DataView(cfg.buffer, cfg.byteOffset, cfg.byteLength);
  return {
    vendor: v.getUint16(0, true),
    device: v.getUint16(2, true),
    revision: v.getUint8(8),
    classCode: v.getUint8(9) | (v.getUint16(10, true) << 8),
    subsystemVendor: cfg.length >= 0x30 ? v.getUint16(0x2c, true) : 0,
    subsystemDevice: cfg.length >= 0x30 ? v.getUint16(0x2e, true) : 0,
  };
}
