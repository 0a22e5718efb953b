// UKI assembly, checked three ways: binutils reads back the sections we wrote, an independent
// PE checksum agrees, and the firmware boots the result (x86_64 OVMF and aarch64 QEMU_EFI).
//
// Needs the Debian packages fetched by scripts/debs.sh (cached under ~/.cache/ramroot/debs),
// GNU cpio, binutils + binutils-aarch64-linux-gnu, osslsigncode, sbsigntool, qemu-system-x86/-arm,
// ovmf, qemu-efi-aarch64. The boot tests are the ones that prove the layout; the Secure Boot
// boots (Debian's snakeoil firmware variables) prove that signatures made by sbsign and by
// osslsigncode both cover what the firmware hashes.
import { execFile as execFileCb, execFileSync, spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { promisify } from "node:util";
import { IMAGE_FILE_LOCAL_SYMS_STRIPPED, parsePe, unsectioned } from "../src/image/pe";
import { buildUki, COMMAND_LINE_SIZE, inspectUki, kernelArch, kernelProblem, kernelRelease, UkiInput, validateCmdline } from "../src/image/uki";
import { authenticodeDigest, readSignatures } from "../src/image/authenticode";
import { signUki, verifyUki } from "../src/image/sign";
import { makeEspImage } from "../src/boot/bootmedia";

const execFile = promisify(execFileCb);
const repo = path.resolve(__dirname, "..", "..");
const MARKER = "RAMROOT-UKI-TEST-BOOTED";

interface Arch {
  name: "x86_64" | "aarch64";
  stub: string;
  elfStub: string; // the ELF the stub was made from, shipped beside it

  kernel: string;
  busybox: string;
  console: string;
  objdump: string;
  objcopy: string;
  qemu: (uki: string, dir: string) => string[];
  /** QEMU booting `disk` with Secure Boot enforced and Debian's snakeoil certificate in db. */
  secureBoot: (disk: string, dir: string) => string[];
}

// Debian's test key for its Secure Boot firmware builds: the variable stores OVMF_VARS_4M.snakeoil.fd
// and AAVMF_VARS.snakeoil.fd hold its certificate as PK, KEK and db.
const SNAKEOIL = { key: "/usr/share/ovmf/PkKek-1-snakeoil.key", cert: "/usr/share/ovmf/PkKek-1-snakeoil.pem", passphrase: "snakeoil" };

let tmp: string;
const arches: Record<string, Arch> = {};

function debs(...pkgs: string[]): string[] {
  return execFileSync("bash", [path.join(repo, "scripts/debs.sh"), ...pkgs], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }).trim().split("\n");
}

function only(dir: string, re: RegExp): string {
  const hits = fs.readdirSync(dir).filter((f) => re.test(f));
  assert.equal(hits.length, 1, `one file matching ${re} in ${dir}`);
  return path.join(dir, hits[0]);
}

// A gzip'd newc archive holding a static busybox and an /init that prints MARKER and powers off.
function makeInitrd(busybox: string, out: string): void {
  const root = fs.mkdtempSync(path.join(tmp, "root-"));
  fs.chmodSync(root, 0o755);
  fs.mkdirSync(path.join(root, "bin"));
  fs.copyFileSync(busybox, path.join(root, "bin/busybox"));
  fs.chmodSync(path.join(root, "bin/busybox"), 0o755);
  fs.writeFileSync(path.join(root, "init"), `#!/bin/busybox sh\n/bin/busybox echo ${MARKER}-$(/bin/busybox uname -m)\n/bin/busybox poweroff -f\n`, { mode: 0o755 });
  execFileSync("sh", ["-c", `cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet --reproducible | gzip -n > "$2"`, "sh", root, out]);
}

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-uki-"));
  const [bootArm, kernelX86, kernelArm, bbX86, bbArm] = debs("systemd-boot-efi:arm64", "linux-image-cloud-amd64", "linux-image-cloud-arm64:arm64", "busybox-static", "busybox-static:arm64");
  arches.x86_64 = {
    name: "x86_64",
    stub: "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
    elfStub: "/usr/lib/systemd/boot/efi/linuxx64.elf.stub",
    kernel: only(path.join(kernelX86, "boot"), /^vmlinuz-/),
    busybox: path.join(bbX86, "bin/busybox"),
    console: "ttyS0",
    objdump: "objdump",
    objcopy: "objcopy",
    qemu: (uki, dir) => {
      const vars = path.join(dir, "OVMF_VARS.fd");
      fs.copyFileSync("/usr/share/OVMF/OVMF_VARS_4M.fd", vars);
      return ["qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot",
        "-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
        "-drive", `if=pflash,format=raw,file=${vars}`, "-kernel", uki];
    },
    secureBoot: (disk, dir) => {
      const vars = path.join(dir, "OVMF_VARS.snakeoil.fd");
      fs.copyFileSync("/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd", vars);
      return ["qemu-system-x86_64", "-accel", "tcg", "-M", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on", "-m", "512", "-nographic", "-no-reboot", "-net", "none",
        "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
        "-drive", `if=pflash,format=raw,unit=1,file=${vars}`, "-drive", `file=${disk},format=raw,if=virtio`];
    },
  };
  arches.aarch64 = {
    name: "aarch64",
    stub: path.join(bootArm, "usr/lib/systemd/boot/efi/linuxaa64.efi.stub"),
    elfStub: path.join(bootArm, "usr/lib/systemd/boot/efi/linuxaa64.elf.stub"),
    kernel: only(path.join(kernelArm, "boot"), /^vmlinuz-/),
    busybox: path.join(bbArm, "bin/busybox"),
    console: "ttyAMA0",
    objdump: "aarch64-linux-gnu-objdump",
    objcopy: "aarch64-linux-gnu-objcopy",
    qemu: (uki) => ["qemu-system-aarch64", "-accel", "tcg", "-M", "virt", "-cpu", "cortex-a72", "-m", "1024", "-nographic", "-no-reboot",
      "-bios", "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd", "-boot", "menu=on,splash-time=0", "-kernel", uki],
    secureBoot: (disk, dir) => {
      const vars = path.join(dir, "AAVMF_VARS.snakeoil.fd");
      fs.copyFileSync("/usr/share/AAVMF/AAVMF_VARS.snakeoil.fd", vars);
      return ["qemu-system-aarch64", "-accel", "tcg", "-M", "virt", "-cpu", "cortex-a72", "-m", "1024", "-nographic", "-no-reboot", "-net", "none",
        "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.snakeoil.fd",
        "-drive", `if=pflash,format=raw,unit=1,file=${vars}`, "-boot", "menu=on,splash-time=0", "-drive", `file=${disk},format=raw,if=virtio`];
    },
  };
  for (const a of Object.values(arches)) makeInitrd(a.busybox, path.join(tmp, `initrd-${a.name}.cpio.gz`));
});

after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

async function inputFor(a: Arch): Promise<UkiInput> {
  return {
    stub: a.stub,
    linux: a.kernel,
    initrds: [path.join(tmp, `initrd-${a.name}.cpio.gz`)],
    cmdline: `console=${a.console} rdinit=/init`,
    osRelease: 'ID=ramroot\nPRETTY_NAME="ramroot test"\n',
    uname: await kernelRelease(a.kernel),
  };
}

const sha256 = (buf: Buffer) => createHash("sha256").update(buf).digest("hex");

// objdump -h: "Idx Name Size VMA LMA File-off Algn"
function objdumpSections(objdump: string, file: string): { name: string; size: number; vma: number; offset: number }[] {
  const out = execFileSync(objdump, ["-h", file], { encoding: "utf8" });
  return [...out.matchAll(/^\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s/gm)].map((m) => ({
    name: m[1], size: parseInt(m[2], 16), vma: parseInt(m[3], 16), offset: parseInt(m[4], 16),
  }));
}

function objcopySection(objcopy: string, file: string, name: string): Buffer {
  const out = path.join(tmp, `section${name}-${path.basename(file)}`);
  execFileSync(objcopy, ["-O", "binary", `--only-section=${name}`, file, out]);
  return fs.readFileSync(out);
}

// The PE checksum, written independently of src/image/pe.ts: whole file in memory, 16-bit words.
function referenceChecksum(buf: Buffer): number {
  const field = buf.readUInt32LE(0x3c) + 24 + 64;
  let sum = 0;
  for (let i = 0; i < buf.length; i += 2) {
    if (i === field || i === field + 2) continue;
    sum += i + 1 < buf.length ? buf.readUInt16LE(i) : buf[i];
    sum = (sum & 0xffff) + (sum >>> 16);
  }
  return sum + buf.length;
}

// Boots `uki` and resolves with the console output and the time to the marker.
async function boot(a: Arch, uki: string): Promise<{ log: string; seconds: number }> {
  const [cmd, ...args] = a.qemu(uki, tmp);
  const start = Date.now();
  const r = await execFile("timeout", ["120", cmd, ...args], { encoding: "latin1", maxBuffer: 64 << 20 }).catch((e) => e as { stdout: string; stderr: string; code: number });
  return { log: `${r.stdout}${r.stderr}`, seconds: (Date.now() - start) / 1000 };
}

// Boots until one of `until` matches the console output (then stops QEMU) or it exits; a refused
// image leaves the firmware waiting at its boot menu, so waiting for an exit alone would hang.
async function bootUntil(argv: string[], until: RegExp[], timeoutMs = 180_000): Promise<{ log: string; seconds: number; matched?: RegExp }> {
  const [cmd, ...args] = argv;
  const start = Date.now();
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  let matched: RegExp | undefined;
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    const feed = (d: Buffer) => {
      log += d.toString("latin1");
      matched ??= until.find((re) => re.test(log));
      if (matched) child.kill("SIGKILL");
    };
    child.stdout.on("data", feed);
    child.stderr.on("data", feed);
    child.on("close", () => { clearTimeout(timer); resolve(); });
  });
  return { log, seconds: (Date.now() - start) / 1000, matched };
}

for (const name of ["x86_64", "aarch64"]) {
  describe(`UKI for ${name}`, () => {
    let a: Arch;
    let input: UkiInput;
    let uki: string;
    let built: Awaited<ReturnType<typeof buildUki>>;

    before(async () => {
      a = arches[name];
      input = await inputFor(a);
      uki = path.join(tmp, `${name}.efi`);
      const t0 = Date.now();
      built = await buildUki(input, uki);
      process.stderr.write(`# ${name}: built ${built.size} bytes in ${Date.now() - t0} ms\n`);
    });

    test("kernelRelease reads the version the package names the kernel by", () => {
      assert.equal(input.uname, path.basename(a.kernel).replace(/^vmlinuz-/, ""));
    });

    test("objdump lists the sections with their sizes, in ukify's order, without overlap", () => {
      const pe = parsePe(fs.readFileSync(uki), uki);
      const listed = objdumpSections(a.objdump, uki);
      const added = listed.slice(-5);
      assert.deepEqual(added.map((s) => s.name), [".osrel", ".cmdline", ".uname", ".initrd", ".linux"]);
      const sizes = [input.osRelease!.length, input.cmdline.length, input.uname!.length, fs.statSync(input.initrds[0]).size, fs.statSync(a.kernel).size];
      assert.deepEqual(added.map((s) => s.size), sizes);
      // objdump and buildUki agree on every section, the stub's included.
      assert.deepEqual(listed.map((s) => [s.name, s.vma, s.offset]), built.sections.filter((s) => s.size > 0).map((s) => [s.name, s.vma, s.offset]));
      const byVma = [...built.sections].sort((x, y) => x.vma - y.vma);
      for (let i = 1; i < byVma.length; i++) assert.ok(byVma[i].vma >= byVma[i - 1].vma + byVma[i - 1].size, `${byVma[i].name} overlaps ${byVma[i - 1].name} in memory`);
      for (const s of built.sections.slice(-5)) {
        assert.equal(s.vma % pe.sectionAlignment, 0, `${s.name} VMA aligned`);
        assert.equal(s.offset % pe.fileAlignment, 0, `${s.name} file offset aligned`);
      }
      if (name === "aarch64") {
        // The case that broke fixed offsets: a kernel above 16 MiB.
        assert.ok(sizes[4] > 16 << 20, "arm64 kernel is over 16 MiB");
      }
      const linux = built.sections.at(-1)!;
      assert.equal(pe.sizeOfImage, Math.ceil((linux.vma + linux.size) / pe.sectionAlignment) * pe.sectionAlignment);
      assert.equal(pe.sections.length, built.sections.length);
      assert.equal(pe.timeDateStamp, parsePe(fs.readFileSync(a.stub), a.stub).timeDateStamp);
    });

    test("objcopy extracts exactly the inputs", () => {
      assert.equal(objcopySection(a.objcopy, uki, ".cmdline").toString(), input.cmdline);
      assert.equal(objcopySection(a.objcopy, uki, ".osrel").toString(), input.osRelease);
      assert.equal(objcopySection(a.objcopy, uki, ".uname").toString(), input.uname);
      assert.ok(objcopySection(a.objcopy, uki, ".initrd").equals(fs.readFileSync(input.initrds[0])));
      assert.equal(sha256(objcopySection(a.objcopy, uki, ".linux")), sha256(fs.readFileSync(a.kernel)));
    });

    test("the PE checksum matches an independent computation and osslsigncode", () => {
      const buf = fs.readFileSync(uki);
      const pe = parsePe(buf, uki);
      assert.equal(pe.checksum, referenceChecksum(buf));
      const out = execFileSync("sh", ["-c", 'osslsigncode verify "$1" 2>&1 || true', "sh", uki], { encoding: "utf8" });
      // osslsigncode prints one line when the stored checksum is right, two when it is not.
      assert.match(out, new RegExp(`^PE checksum\\s*: ${pe.checksum.toString(16).toUpperCase().padStart(8, "0")}$`, "m"));
      assert.doesNotMatch(out, /invalid PE checksum/);
      assert.equal(built.size, buf.length);
      assert.equal(built.sha256, sha256(buf));
    });

    test("nothing outside the headers and sections: the stub's symbol table and stray bytes dropped, its SBAT in .sbat", () => {
      const buf = fs.readFileSync(uki);
      const pe = parsePe(buf, uki);
      assert.equal(pe.pointerToSymbolTable, 0);
      assert.equal(pe.numberOfSymbols, 0);
      // Headers, then each section where the previous one ends, and the file ends with the last.
      let pos = pe.sizeOfHeaders;
      for (const s of [...pe.sections].sort((x, y) => x.pointerToRawData - y.pointerToRawData)) {
        assert.equal(s.pointerToRawData, pos, `${s.name} starts where the previous section ends`);
        pos += s.sizeOfRawData;
      }
      assert.equal(buf.length, pos);
      assert.deepEqual(unsectioned(pe, buf.length), []);

      const stubBuf = fs.readFileSync(a.stub);
      const stub = parsePe(stubBuf, a.stub);
      const sectionsEnd = Math.max(...stub.sections.map((s) => s.pointerToRawData + s.sizeOfRawData));
      if (name === "x86_64") {
        // Debian's x86_64 stub: a COFF symbol table (and its strings) after the last section.
        assert.ok(stub.numberOfSymbols > 0 && stub.pointerToSymbolTable === sectionsEnd);
        assert.deepEqual(built.dropped, [{ offset: sectionsEnd, size: stubBuf.length - sectionsEnd, what: "COFF symbol table" }]);
        assert.equal(pe.characteristics, stub.characteristics | IMAGE_FILE_LOCAL_SYMS_STRIPPED);
        assert.deepEqual(built.recovered, []);
      } else {
        // Debian's aarch64 stub: what objcopy -O binary left past the last section, SBAT among it.
        assert.equal(stub.numberOfSymbols, 0);
        assert.deepEqual(built.dropped, [{ offset: sectionsEnd, size: stubBuf.length - sectionsEnd, what: "unsectioned data" }]);
        assert.deepEqual(built.recovered, [".sbat", ".sdmagic"]);
        assert.equal(pe.characteristics, stub.characteristics);
      }
      // The SBAT and .sdmagic the stub was built with, as the ELF stub holds them (objcopy
      // reads them from the ELF, which owes nothing to our parsing), are the UKI's sections.
      for (const s of [".sbat", ".sdmagic"]) {
        const want = objcopySection(a.objcopy, a.elfStub, s);
        assert.ok(want.length > 0 && objcopySection(a.objcopy, uki, s).equals(want), `${s} differs from the ELF stub's`);
      }
      assert.match(objcopySection(a.objcopy, uki, ".sbat").toString(), /^sbat,1,SBAT Version,sbat,1,https:\/\/github\.com\/rhboot\/shim\/blob\/main\/SBAT\.md\nsystemd,1,/);
    });

    test("inspectUki reads back what buildUki wrote", async () => {
      const seen = await inspectUki(uki);
      assert.equal(seen.arch, name);
      assert.deepEqual(seen.sections.map(({ sha256: _, ...where }) => where), built.sections);
      // Each payload section holds exactly its input's bytes.
      const hashOf = (n: string) => seen.sections.find((s) => s.name === n)?.sha256;
      assert.equal(hashOf(".linux"), sha256(fs.readFileSync(input.linux)));
      assert.equal(hashOf(".initrd"), sha256(fs.readFileSync(input.initrds[0])));
      assert.equal(hashOf(".cmdline"), sha256(Buffer.from(input.cmdline)));
      assert.equal(hashOf(".osrel"), sha256(Buffer.from(input.osRelease!)));
      assert.equal(hashOf(".uname"), sha256(Buffer.from(input.uname!)));
      assert.equal(seen.cmdline, input.cmdline);
      assert.equal(seen.osRelease, input.osRelease);
      assert.equal(seen.uname, input.uname);
      const initrd = built.sections.find((s) => s.name === ".initrd")!;
      assert.deepEqual(seen.initrd, { offset: initrd.offset, size: initrd.size });
    });

    test("two builds are byte-identical", async () => {
      const again = path.join(tmp, `${name}-again.efi`);
      const second = await buildUki(input, again);
      assert.equal(second.sha256, built.sha256);
      assert.ok(fs.readFileSync(again).equals(fs.readFileSync(uki)));
      fs.rmSync(again);
    });

    test(`boots in QEMU (TCG) to the /init marker`, async (t) => {
      const { log, seconds } = await boot(a, uki);
      t.diagnostic(`${name}: qemu start to exit (marker seen) ${seconds.toFixed(1)} s`);
      assert.match(log, new RegExp(`Kernel command line: ${input.cmdline}`), "the kernel got the embedded .cmdline");
      assert.match(log, new RegExp(`${MARKER}-${name}`), `no marker in the console output:\n${log.slice(-3000)}`);
    });

    // Signed by sbsign (through signUki) and by osslsigncode, with Debian's snakeoil key.
    const sbsigned = () => path.join(tmp, `${name}-sbsign.efi`);
    const osssigned = () => path.join(tmp, `${name}-osslsigncode.efi`);

    test("sbsign, osslsigncode, sbverify and EDK2's algorithm agree on the Authenticode digest", async (t) => {
      const digest = await authenticodeDigest(uki);
      const cert = fs.readFileSync(SNAKEOIL.cert);
      const signed = await signUki(uki, sbsigned(), { key: fs.readFileSync(SNAKEOIL.key), passphrase: SNAKEOIL.passphrase, cert });
      assert.equal(signed.digest, digest);
      execFileSync("osslsigncode", ["sign", "-h", "sha256", "-certs", SNAKEOIL.cert, "-key", SNAKEOIL.key, "-pass", SNAKEOIL.passphrase, "-in", uki, "-out", osssigned()], { stdio: "pipe" });
      // The digest each signer put into its signature...
      assert.equal((await readSignatures(sbsigned()))[0].digest, digest, "sbsign signed another digest");
      assert.equal((await readSignatures(osssigned()))[0].digest, digest, "osslsigncode signed another digest");
      // ...and the digest each verifier computes, on what each signer signed.
      for (const f of [sbsigned(), osssigned()]) {
        const o = spawnSync("osslsigncode", ["verify", "-CAfile", SNAKEOIL.cert, "-in", f], { encoding: "utf8" });
        const text = `${o.stdout}${o.stderr}`;
        assert.match(text, new RegExp(`Current message digest\\s*: ${digest.toUpperCase()}`), text);
        assert.match(text, new RegExp(`Calculated message digest\\s*: ${digest.toUpperCase()}`), text);
        assert.doesNotMatch(text, /MISMATCH/);
        assert.match(text, /Signature verification: ok/);
        const v = spawnSync("sbverify", ["--cert", SNAKEOIL.cert, f], { encoding: "utf8" });
        assert.equal(v.status, 0, `sbverify: ${v.stdout}${v.stderr}`);
        assert.doesNotMatch(`${v.stdout}${v.stderr}`, /warning|gap|remaining/);
        const mine = await verifyUki(f, cert);
        assert.ok(mine.ok, mine.why);
        assert.equal(mine.digest, digest);
      }
      t.diagnostic(`${name}: Authenticode SHA-256 ${digest} (sbsign, osslsigncode, sbverify, authenticodeDigest)`);
    });

    test("under Secure Boot (snakeoil in db) the sbsign- and osslsigncode-signed UKIs boot; unsigned or modified, the firmware refuses it", async (t) => {
      assert.ok(fs.existsSync(sbsigned()) && fs.existsSync(osssigned()), "the signing test did not run");
      // One byte of .cmdline changed after signing ("console=" becomes "Console=").
      const tampered = path.join(tmp, `${name}-tampered.efi`);
      const buf = fs.readFileSync(sbsigned());
      const cmdline = built.sections.find((s) => s.name === ".cmdline")!;
      buf[cmdline.offset] ^= 0x20;
      fs.writeFileSync(tampered, buf);
      const refused = /failed to load Boot\d+ "UEFI Misc Device"[^\n]*: Access Denied/;
      const booted = new RegExp(`${MARKER}-${name}`);
      for (const [label, file, expect] of [["sbsign", sbsigned(), booted], ["osslsigncode", osssigned(), booted], ["unsigned", uki, refused], ["modified", tampered, refused]] as const) {
        const disk = path.join(tmp, `${name}-secureboot.img`);
        await makeEspImage({ efi: file, arch: a.name, out: disk });
        const r = await bootUntil(a.secureBoot(disk, tmp), [booted, refused]);
        t.diagnostic(`${name} ${label}: ${r.matched === booted ? "booted" : r.matched === refused ? "refused (Access Denied)" : "neither"} in ${r.seconds.toFixed(1)} s`);
        assert.equal(r.matched, expect, `${label}: expected ${expect}, console:\n${r.log.slice(-3000)}`);
        fs.rmSync(disk);
      }
    });
  });
}

describe("UKI assembly details", () => {
  test("several initrds become one .initrd, in order, each padded to 4 bytes", async () => {
    const a = arches.x86_64;
    const parts = [Buffer.from("first archive, 31 bytes long..."), Buffer.from("second"), Buffer.from("third!")];
    const files = parts.map((p, i) => { const f = path.join(tmp, `part${i}`); fs.writeFileSync(f, p); return f; });
    const uki = path.join(tmp, "multi.efi");
    await buildUki({ stub: a.stub, linux: a.kernel, initrds: files, cmdline: "console=ttyS0" }, uki);
    const expected = Buffer.concat([parts[0], Buffer.alloc(1), parts[1], Buffer.alloc(2), parts[2]]);
    assert.ok(objcopySection("objcopy", uki, ".initrd").equals(expected));
    const seen = await inspectUki(uki);
    assert.deepEqual(seen.sections.slice(-3).map((s) => s.name), [".cmdline", ".initrd", ".linux"], "no .osrel/.uname when not given");
    assert.equal(seen.initrd?.size, expected.length);
  });

  test("large inputs are streamed, not held in memory", async () => {
    const a = arches.x86_64;
    const big = path.join(tmp, "big-initrd");
    fs.closeSync(fs.openSync(big, "w"));
    fs.truncateSync(big, 300 << 20); // sparse: cheap to make and to read
    const before = process.memoryUsage().rss;
    let peak = before;
    const timer = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss); }, 10);
    const t0 = Date.now();
    const r = await buildUki({ stub: a.stub, linux: a.kernel, initrds: [big], cmdline: "console=ttyS0" }, path.join(tmp, "big.efi"));
    clearInterval(timer);
    process.stderr.write(`# 300 MiB initrd: built ${r.size} bytes in ${Date.now() - t0} ms, RSS grew ${((peak - before) / 1048576).toFixed(0)} MiB\n`);
    assert.ok(r.size > 300 << 20);
    assert.ok(peak - before < 150 << 20, `RSS grew by ${peak - before} bytes`);
    fs.rmSync(path.join(tmp, "big.efi"));
  });

  test("a failed build leaves neither the output nor a temporary file", async () => {
    const a = arches.x86_64;
    const dir = fs.mkdtempSync(path.join(tmp, "out-"));
    // The output path is a non-empty folder: everything is written, then the rename fails.
    fs.mkdirSync(path.join(dir, "uki.efi", "x"), { recursive: true });
    await assert.rejects(buildUki({ stub: a.stub, linux: a.kernel, initrds: [], cmdline: "x" }, path.join(dir, "uki.efi")));
    assert.deepEqual(fs.readdirSync(dir), ["uki.efi"]);
  });

  test("a stub with bytes between its sections and a symbol table: sections packed, the rest dropped", async () => {
    // Two sections of 0x200 bytes at 0x400 and 0x800, 0x200 stray bytes between them, and a
    // COFF symbol table (2 records, a 9-byte string table) at the end.
    const stub = syntheticStub(2, true);
    const sizeOfHeaders = 0x400;
    const withRoom = Buffer.concat([stub.subarray(0, 0x200), Buffer.alloc(0x200), stub.subarray(0x200)]);
    const opt = 0x58;
    withRoom.writeUInt32LE(sizeOfHeaders, opt + 60);
    const table = 0x40 + 24 + 240;
    const s0 = Buffer.alloc(0x200, "section zero ");
    const s1 = Buffer.alloc(0x200, "section one ");
    const stray = Buffer.alloc(0x200, "RAMROOT-STRAY-BYTES ");
    const symbols = Buffer.concat([Buffer.alloc(36, 0x5a), Buffer.from([9, 0, 0, 0]), Buffer.from("abcd\0")]);
    const file = Buffer.concat([withRoom.subarray(0, sizeOfHeaders), s0, stray, s1, symbols]);
    file.writeUInt32LE(0x400, table + 20);
    file.writeUInt32LE(0x800, table + 40 + 20);
    file.writeUInt32LE(0xa00, 0x40 + 12); // PointerToSymbolTable
    file.writeUInt32LE(2, 0x40 + 16); // NumberOfSymbols
    const f = path.join(tmp, "gappy.stub");
    fs.writeFileSync(f, file);
    const uki = path.join(tmp, "gappy.efi");
    const built = await buildUki({ stub: f, linux: arches.x86_64.kernel, initrds: [], cmdline: "console=ttyS0" }, uki);
    assert.deepEqual(built.dropped, [{ offset: 0x600, size: 0x200, what: "unsectioned data" }, { offset: 0xa00, size: symbols.length, what: "COFF symbol table" }]);
    const out = fs.readFileSync(uki);
    const pe = parsePe(out, uki);
    assert.deepEqual(pe.sections.slice(0, 2).map((s) => [s.name, s.pointerToRawData, s.sizeOfRawData]), [[".s0", 0x400, 0x200], [".s1", 0x600, 0x200]]);
    assert.ok(out.subarray(0x400, 0x600).equals(s0) && out.subarray(0x600, 0x800).equals(s1));
    assert.equal(out.indexOf("RAMROOT-STRAY-BYTES"), -1);
    assert.equal(pe.pointerToSymbolTable, 0);
    assert.equal(pe.numberOfSymbols, 0);
    assert.ok(pe.characteristics & IMAGE_FILE_LOCAL_SYMS_STRIPPED);
    assert.deepEqual(unsectioned(pe, out.length), []);
    assert.equal(pe.checksum, referenceChecksum(out));
    // objdump reads the packed sections where the headers say they are.
    assert.deepEqual(objdumpSections("objdump", uki).slice(0, 2).map((s) => [s.name, s.offset]), [[".s0", 0x400], [".s1", 0x600]]);

    // A debug directory points into the sections by file offset: moving them is refused.
    file.writeUInt32LE(0x1000, opt + 112 + 8 * 6);
    file.writeUInt32LE(28, opt + 112 + 8 * 6 + 4);
    fs.writeFileSync(f, file);
    await assert.rejects(buildUki({ stub: f, linux: arches.x86_64.kernel, initrds: [], cmdline: "console=ttyS0" }, uki), /gappy\.stub has bytes between its sections and a debug directory/);
  });

  test("kernelRelease is undefined for something that is not a kernel", async () => {
    assert.equal(await kernelRelease(arches.x86_64.stub), undefined);
  });
});

describe("UKI errors name the problem and the fix", () => {
  const base = (): UkiInput => ({ stub: arches.x86_64.stub, linux: arches.x86_64.kernel, initrds: [path.join(tmp, "initrd-x86_64.cpio.gz")], cmdline: "console=ttyS0" });
  const out = () => path.join(tmp, "err.efi");

  test("a stub that is not a PE", async () => {
    const notPe = path.join(tmp, "initrd-x86_64.cpio.gz");
    await assert.rejects(buildUki({ ...base(), stub: notPe }, out()), (e: Error) => {
      assert.ok(e.message.includes(`${notPe} is not a PE/COFF image (no MZ header)`), e.message);
      assert.match(e.message, /linuxx64\.efi\.stub/);
      return true;
    });
  });

  test("missing stub, kernel, initrd", async () => {
    await assert.rejects(buildUki({ ...base(), stub: "/nonexistent/stub" }, out()), /systemd-stub \/nonexistent\/stub does not exist: install systemd-boot-efi/);
    await assert.rejects(buildUki({ ...base(), linux: "/nonexistent/vmlinuz" }, out()), /kernel image \/nonexistent\/vmlinuz does not exist: pass the kernel/);
    await assert.rejects(buildUki({ ...base(), initrds: ["/nonexistent/initrd"] }, out()), /initrd \/nonexistent\/initrd does not exist: build it first/);
  });

  test("a UKI passed as the stub", async () => {
    await assert.rejects(buildUki({ ...base(), stub: path.join(tmp, "x86_64.efi") }, out()), /already has a \.cmdline section, so it is a UKI rather than a stub: pass the bare systemd-stub/);
  });

  test("a kernel for the other architecture", async () => {
    await assert.rejects(buildUki({ ...base(), linux: arches.aarch64.kernel }, out()), /is for aarch64 but the stub .* is for x86_64/);
  });

  test("something that is not a kernel for the stub's architecture, and nothing written", async () => {
    const notKernel = path.join(tmp, "not-a-kernel");
    fs.writeFileSync(notKernel, "console=ttyS0\n".repeat(1000));
    await assert.rejects(buildUki({ ...base(), linux: notKernel }, out()), (e: Error) => {
      assert.equal(e.message, `kernel image ${notKernel} is not a Linux kernel for x86_64 (no bzImage header ("HdrS" at 0x202), no arm64 Image header ("ARM\\x64" at 0x38), no PE header): pass the kernel, e.g. /boot/vmlinuz-<version>`);
      return true;
    });
    // The stub is a PE for x86_64, but the other way round: an arm64 stub with the x86 kernel.
    await assert.rejects(buildUki({ ...base(), stub: arches.aarch64.stub }, out()), /kernel image .* is for x86_64 but the stub .*linuxaa64\.efi\.stub is for aarch64/);
    // An initrd is no kernel either.
    await assert.rejects(buildUki({ ...base(), linux: path.join(tmp, "initrd-x86_64.cpio.gz") }, out()), /is not a Linux kernel for x86_64 \(gzip-compressed data: decompress it first/);
    assert.ok(!fs.existsSync(out()));
    assert.deepEqual(await kernelArch(arches.x86_64.kernel), { arch: "x86_64" });
    assert.deepEqual(await kernelArch(arches.aarch64.kernel), { arch: "aarch64" });
    assert.equal(await kernelProblem(arches.aarch64.kernel, "aarch64"), undefined);
    assert.equal(await kernelProblem(arches.aarch64.kernel, "x86_64"), "is for aarch64, not x86_64");
    assert.match((await kernelProblem(notKernel, "aarch64"))!, /^is not a Linux kernel image for aarch64 \(no bzImage header/);
  });

  test("bad command lines", async () => {
    await assert.rejects(buildUki({ ...base(), cmdline: "  " }, out()), /command line is empty/);
    assert.throws(() => validateCmdline(""), /command line is empty/);
    assert.throws(() => validateCmdline("a\nb"), /contains a newline at position 1: separate parameters with spaces/);
    assert.throws(() => validateCmdline("a\0b"), /contains a NUL/);
    assert.throws(() => validateCmdline("x".repeat(COMMAND_LINE_SIZE)), /2048 bytes; Linux keeps at most 2047 \(COMMAND_LINE_SIZE is 2048 on x86_64 and arm64\)/);
    validateCmdline("x".repeat(COMMAND_LINE_SIZE - 1));
  });

  test("no room in the header for more section headers; a signed stub", async () => {
    // A minimal PE32 (not PE32+) whose header has room for exactly one more section header.
    const stub = syntheticStub(4, false);
    const f = path.join(tmp, "tight.stub");
    fs.writeFileSync(f, stub);
    const pe = parsePe(stub, f);
    assert.equal(pe.pe32plus, false);
    assert.deepEqual(pe.sections.map((s) => s.name), [".s0", ".s1", ".s2", ".s3"]);
    await assert.rejects(buildUki({ ...base(), stub: f }, out()), /tight\.stub: no room in the PE header for 3 more section headers \(room for 1\)/);

    const signed = syntheticStub(1, true);
    signed.writeUInt32LE(0x1000, 0x40 + 24 + 112 + 8 * 4); // certificate table directory
    fs.writeFileSync(f, signed);
    await assert.rejects(buildUki({ ...base(), stub: f }, out()), /is signed .* use an unsigned systemd-stub/);
  });
});

// MZ header, PE signature at 0x40, x86_64 COFF header, PE32 or PE32+ optional header with 16
// data directories, `n` sections of 0x200 bytes; SizeOfHeaders and FileAlignment 0x200.
function syntheticStub(n: number, pe32plus: boolean): Buffer {
  const optSize = pe32plus ? 240 : 224;
  const table = 0x40 + 24 + optSize;
  const buf = Buffer.alloc(0x200 * (n + 1));
  buf.write("MZ", 0, "latin1");
  buf.writeUInt32LE(0x40, 0x3c);
  buf.write("PE\0\0", 0x40, "latin1");
  buf.writeUInt16LE(0x8664, 0x44);
  buf.writeUInt16LE(n, 0x46);
  buf.writeUInt16LE(optSize, 0x54);
  const opt = 0x58;
  buf.writeUInt16LE(pe32plus ? 0x20b : 0x10b, opt);
  buf.writeUInt32LE(0x1000, opt + 32); // SectionAlignment
  buf.writeUInt32LE(0x200, opt + 36); // FileAlignment
  buf.writeUInt32LE(0x1000 * (n + 1), opt + 56); // SizeOfImage
  buf.writeUInt32LE(0x200, opt + 60); // SizeOfHeaders
  buf.writeUInt16LE(10, opt + 68); // EFI application
  buf.writeUInt32LE(16, opt + (pe32plus ? 108 : 92));
  for (let i = 0; i < n; i++) {
    const o = table + 40 * i;
    buf.write(`.s${i}`, o, "latin1");
    buf.writeUInt32LE(0x200, o + 8);
    buf.writeUInt32LE(0x1000 * (i + 1), o + 12);
    buf.writeUInt32LE(0x200, o + 16);
    buf.writeUInt32LE(0x200 * (i + 1), o + 20);
  }
  return buf;
}
