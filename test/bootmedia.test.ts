import { test } from "node:test";
import * as assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import {
  ESP_TYPE, checkPersistImage, listEspImage, makeEspImage, makePersistImage, readPersistFile, writePersistFile,
} from "../src/boot/bootmedia";

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "ramroot-bootmedia-test-"));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

test("makeEspImage: one EFI System Partition holding the UKI at the removable-media path", async (t) => {
  const dir = await tempDir(t);
  const efi = path.join(dir, "uki.efi");
  const bytes = randomBytes(5 * 1024 * 1024 + 123);
  await fs.writeFile(efi, bytes);
  for (const [arch, name] of [["aarch64", "EFI/BOOT/BOOTAA64.EFI"], ["x86_64", "EFI/BOOT/BOOTX64.EFI"]] as const) {
    const out = path.join(dir, `${arch}.img`);
    await makeEspImage({ efi, arch, out });

    // sfdisk's own view of the table: exactly one partition, of type EFI System.
    const pt = JSON.parse(execFileSync("sfdisk", ["--json", out], { encoding: "utf8" })).partitiontable;
    assert.equal(pt.label, "gpt");
    assert.equal(pt.partitions.length, 1);
    assert.equal(pt.partitions[0].type, ESP_TYPE);

    // mtools reads the file back, byte for byte.
    const offset = pt.partitions[0].start * pt.sectorsize;
    const back = path.join(dir, `${arch}.back`);
    execFileSync("mcopy", ["-n", "-i", `${out}@@${offset}`, `::/${name}`, back], { env: { ...process.env, MTOOLS_SKIP_CHECK: "1" } });
    assert.equal(sha256(await fs.readFile(back)), sha256(bytes));

    const listing = await listEspImage(out);
    assert.deepEqual(listing.files, [{ path: name, size: bytes.length, sha256: sha256(bytes) }]);
    assert.equal(listing.partition.type, ESP_TYPE);
    assert.equal(listing.fatType, "FAT32");
    assert.match(listing.volumeSerial, /^[0-9A-F]{4}-[0-9A-F]{4}$/);
    assert.equal((await fs.readdir(dir)).filter((f) => f.includes(".tmp-")).length, 0, "no temporary file left");
  }
});

test("makeEspImage is deterministic: same UKI, same bytes; another UKI, other GUIDs", async (t) => {
  const dir = await tempDir(t);
  const efi = path.join(dir, "uki.efi");
  await fs.writeFile(efi, randomBytes(1024 * 1024));
  await makeEspImage({ efi, arch: "x86_64", out: path.join(dir, "a.img") });
  await new Promise((r) => setTimeout(r, 1100)); // a different second for any timestamp
  await fs.utimes(efi, new Date(), new Date());
  await makeEspImage({ efi, arch: "x86_64", out: path.join(dir, "b.img") });
  const a = await fs.readFile(path.join(dir, "a.img"));
  const b = await fs.readFile(path.join(dir, "b.img"));
  assert.equal(sha256(a), sha256(b));
  // The UKI's sha256 given by the caller (components/bootmedia.ts) makes the same image.
  await makeEspImage({ efi, arch: "x86_64", out: path.join(dir, "k.img"), efiSha256: sha256(await fs.readFile(efi)) });
  assert.equal(sha256(await fs.readFile(path.join(dir, "k.img"))), sha256(a));

  await fs.writeFile(efi, randomBytes(1024 * 1024));
  await makeEspImage({ efi, arch: "x86_64", out: path.join(dir, "c.img") });
  const la = await listEspImage(path.join(dir, "a.img"));
  const lc = await listEspImage(path.join(dir, "c.img"));
  assert.notEqual(la.diskId, lc.diskId);
  assert.notEqual(la.partition.uuid, lc.partition.uuid);
});

test("makeEspImage refuses a size that cannot hold the UKI", async (t) => {
  const dir = await tempDir(t);
  const efi = path.join(dir, "uki.efi");
  await fs.writeFile(efi, randomBytes(12 * 1024 * 1024));
  await assert.rejects(makeEspImage({ efi, arch: "aarch64", out: path.join(dir, "x.img"), sizeMiB: 12 }), /cannot hold/);
  await assert.rejects(fs.access(path.join(dir, "x.img")));
});

test("makePersistImage: volume id B61B-19E7, never wiped by a second call", async (t) => {
  const dir = await tempDir(t);
  const img = path.join(dir, "persist.img");
  assert.deepEqual(await makePersistImage({ out: img }), { created: true });
  // The kernel's view of the id (findfs UUID=B61B-19E7) is the FAT serial; mtools shows it too.
  const info = execFileSync("minfo", ["-i", img, "::"], { encoding: "utf8", env: { ...process.env, MTOOLS_SKIP_CHECK: "1" } });
  assert.match(info, /serial number: B61B19E7/i);
  const blkid = execFileSync("blkid", ["-p", "-o", "export", img], { encoding: "utf8" });
  assert.match(blkid, /^UUID=B61B-19E7$/m);
  assert.match(blkid, /^TYPE=vfat$/m);

  assert.equal(await readPersistFile(img, "state/missing"), undefined);
  const data = randomBytes(3000);
  await writePersistFile(img, "var/lib/tailscale/tailscaled.state", data);
  await writePersistFile(img, "seed", Buffer.from("one"));
  await writePersistFile(img, "seed", Buffer.from("two")); // replaces
  assert.deepEqual(await readPersistFile(img, "/var/lib/tailscale/tailscaled.state"), data);
  assert.equal((await readPersistFile(img, "seed"))?.toString(), "two");

  const before = sha256(await fs.readFile(img));
  assert.deepEqual(await makePersistImage({ out: img }), { created: false });
  assert.deepEqual(await makePersistImage({ out: img, volumeId: "12345678", sizeMiB: 8 }), { created: false });
  assert.equal(sha256(await fs.readFile(img)), before, "an existing persistence image is left as it is");
  assert.deepEqual(await readPersistFile(img, "var/lib/tailscale/tailscaled.state"), data);
  await assert.rejects(readPersistFile(img, "../x"), /bad file name/);
});

test("checkPersistImage: fsck.vfat -n finds a fresh image clean and one left mounted dirty, and changes neither", async (t) => {
  const dir = await tempDir(t);
  const img = path.join(dir, "persist.img");
  await makePersistImage({ out: img });
  await writePersistFile(img, "ramroot-boots", Buffer.from("1\n"));
  const clean = await checkPersistImage(img);
  assert.equal(clean.clean, true, clean.output);
  // What Linux's vfat driver does on a read-write mount (FAT32: the state byte at 0x41) and
  // undoes on unmount: a guest killed with the disk mounted leaves it set.
  const fh = await fs.open(img, "r+");
  await fh.write(Buffer.from([0x01]), 0, 1, 0x41);
  await fh.close();
  const before = sha256(await fs.readFile(img));
  const dirty = await checkPersistImage(img);
  assert.equal(dirty.clean, false);
  assert.match(dirty.output, /Dirty bit is set/);
  assert.equal(sha256(await fs.readFile(img)), before, "fsck.vfat -n changed the image");
  await assert.rejects(checkPersistImage(path.join(dir, "missing.img")), /fsck\.vfat -n \S+missing\.img failed/);
});
