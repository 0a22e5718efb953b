// UEFI load options built for a trial boot (src/deploy/load-option.ts), against the variables
// AAVMF really holds on the rehearsal host (read there with od): its auto-made entry for the
// stick names the virtio disk only, so the trial entry adds the GPT partition's HD() node.
import { test } from "node:test";
import assert from "node:assert/strict";
import { encodeLoadOption, gptPartition, hardDriveNode, loadOptionFile, parseLoadOption, trialLoadOption, varFile, varPayload } from "../src/deploy/load-option";
import { parseStatus } from "../src/deploy/trial";


test("the firmware's own entry parses; the trial entry is its disk, a HD() node of the partition, our file", () => {
  const misc = Buffer.from("07000000" + "01000000" + "1600" + Buffer.from("UEFI Misc Device\0", "utf16le").toString("hex") +
    "02010c00d041030a00000000" + "01010600" + "0001" + "7fff0400" + "4eac0881119f594d850ee21a522c59b2", "hex");
  const opt = parseLoadOption(varPayload(misc));
  assert.equal(opt.description, "UEFI Misc Device");
  assert.equal(opt.path.length, 2);
  assert.equal(opt.optional.length, 16);
  // Re-encoding gives the same bytes.
  assert.deepEqual(varFile(encodeLoadOption(opt)), misc);
  const part = { number: 1, start: 2048n, size: 520192n, guid: Buffer.from("00112233445566778899aabbccddeeff", "hex") };
  const t = trialLoadOption(opt, part, "\\EFI\\ramroot\\trial.efi", "ramroot trial abc");
  const bytes = encodeLoadOption(t);
  const back = parseLoadOption(bytes);
  assert.equal(back.description, "ramroot trial abc");
  assert.equal(loadOptionFile(back), "\\EFI\\ramroot\\trial.efi");
  assert.deepEqual(back.path.map((n) => `${n.type}/${n.subtype}/${n.data.length}`), ["2/1/8", "1/1/2", "4/1/38", "4/4/46"]);
  assert.deepEqual(back.path[2].data, hardDriveNode(part).data);
  assert.equal(back.optional.length, 0, "OVMF's auto-created marker is not copied (the firmware would treat the entry as its own)");
  assert.equal(back.attributes, 1);
  // An entry that already names a partition keeps its path up to it.
  const onPart = trialLoadOption(back, undefined, "\\EFI\\x.efi", "x");
  assert.equal(onPart.path.length, 4);
  assert.equal(loadOptionFile(onPart), "\\EFI\\x.efi");
  // A firmware-volume entry (the UEFI shell) names no disk: refused, saying what to do.
  const shell = { attributes: 1, description: "EFI Internal Shell", path: [{ type: 4, subtype: 7, data: Buffer.alloc(16) }], optional: Buffer.alloc(0) };
  assert.throws(() => trialLoadOption(shell, part, "\\EFI\\x.efi", "x"), /names no partition and no disk.*ramroot:trialBoot false/);
  assert.throws(() => parseLoadOption(Buffer.from("0100000040000000", "hex")), /no terminating NUL|runs past/);
});

test("gptPartition reads the entry from a GPT header and its array", () => {
  const header = Buffer.alloc(512);
  header.write("EFI PART", 0, "latin1");
  header.writeUInt32LE(128, 84);
  const entries = Buffer.alloc(512 * 32);
  const guid = Buffer.from("aabbccddeeff00112233445566778899", "hex");
  guid.copy(entries, 16);
  entries.writeBigUInt64LE(2048n, 32);
  entries.writeBigUInt64LE(2048n + 520192n - 1n, 40);
  assert.deepEqual(gptPartition(header, entries, 1), { number: 1, start: 2048n, size: 520192n, guid });
  assert.throws(() => gptPartition(Buffer.alloc(512), entries, 1), /no GPT header/);
});

test("the host's status: build, boot id, BootCurrent, confirmation, health report", () => {
  const st = parseStatus([
    "build 0123abcd", "boot 5e0c-1", "bootcurrent 060000000300", "confirmed",
    "health ramroot-health: begin 1 build=0123abcd", "health ramroot-health: mount ok /media/usb UUID=B61B-19E7 vfat",
    "health ramroot-health: result ok problems=0 mounts=1 services=3", ""].join("\n"));
  assert.equal(st.build, "0123abcd");
  assert.equal(st.boot, "5e0c-1");
  assert.equal(st.bootCurrent, 3);
  assert.equal(st.confirmed, true);
  assert.equal(st.health?.result, "ok");
  const bad = parseStatus("build x\nboot b\nhealth ramroot-health: begin 1 build=x\nhealth ramroot-health: service failed sshd default\nhealth ramroot-health: result fail problems=1 mounts=0 services=3\n");
  assert.deepEqual(bad.health?.problems, ["service sshd failed to start (runlevel default)"]);
  assert.equal(bad.bootCurrent, undefined);
  assert.equal(parseStatus("build x\nboot b\n").health, undefined);
});
