// The system's own Go programs (system/go.mod, system/cmd/NAME/), built for the image's
// architecture into a layer of their own, and the example's status service, srvmonitor, proved
// in the booted image by the boot check's probes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Project, repo } from "./project";
import { handlers as goprograms } from "../components/goprograms";
import { configureHash } from "../src/rootfs/rootfs";
import { configureRootfs, hostProblem, mountsUnder } from "../src/rootfs/configure";
import { findGo, goBuildCache, goOwned, layerProblem } from "../src/image/golayer";
import { parseProbes, runProbe } from "../src/boot/probe";
import { CONSOLE_POWEROFF, FW_CFG_WAIT_POWEROFF, HEALTH_HOOK } from "../src/boot/health";
import * as http from "node:http";

const system = path.join(repo, "system");

/** A scratch copy of the example system folder, a store of its own, and the old env back afterwards. */
function scratch(t: { after(fn: () => void): void }, env: Record<string, string | undefined> = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-go-"));
  fs.cpSync(system, path.join(dir, "system"), { recursive: true });
  const keep: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries({ RAMROOT_STORE: path.join(dir, "store"), ...env })) {
    keep[k] = process.env[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  t.after(() => {
    for (const [k, v] of Object.entries(keep)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { dir, system: path.join(dir, "system"), store: path.join(dir, "store") };
}

const check = async (inputs: Record<string, any>) => goprograms.check({}, inputs);
const build = async (inputs: Record<string, any>) => {
  const c = await check(inputs);
  assert.deepEqual(c.failures ?? [], [], JSON.stringify(c.failures));
  return (await goprograms.create(c.inputs!)).outs!;
};
const listStore = (store: string) => (fs.existsSync(store) ? fs.readdirSync(store, { recursive: true }).map(String).sort() : []);

test("srvmonitor's own Go tests pass (go test, as the suite runs them): nothing outside /etc/monitor.d runs, whatever the path", { timeout: 15 * 60_000 }, () => {
  const { go } = findGo();
  const r = spawnSync(go, ["test", "-count=1", "./..."], {
    cwd: system,
    encoding: "utf8",
    env: { ...process.env, GOTOOLCHAIN: "auto", GOFLAGS: "-buildvcs=false", GOWORK: "off", GOCACHE: goBuildCache(), CGO_ENABLED: "0" },
  });
  assert.equal(r.status, 0, `go test failed:\n${r.stdout}\n${r.stderr}`);
  assert.match(r.stdout, /^ok\s+ramroot\.example\/system\/cmd\/srvmonitor/m);
});

test("the Go layer's hash: known in preview from the module's files, the arch and the toolchain; stage 2 leaves the module out", async (t) => {
  const s = scratch(t);
  const inputs = { system: s.system, arch: "aarch64" };
  const a = (await check(inputs)).inputs!;
  assert.match(a.hash, /^[0-9a-f]{64}$/);
  assert.match(a.toolchain, /^go1\.\d+/);
  assert.notEqual((await check({ ...inputs, arch: "x86_64" })).inputs!.hash, a.hash, "the arch is in the hash");
  assert.deepEqual(goOwned(s.system), ["cmd/srvmonitor", "go.mod"]);
  const stage2 = () => configureHash({ arch: "aarch64", source: { kind: "folder", path: "/nonexistent" }, skeleton: path.join(s.system, "root"), setup: path.join(s.system, "setup.sh"), system: s.system }, "stage1");
  const before = await stage2();

  // A program's source: the Go layer changes, stage 2 does not.
  fs.appendFileSync(path.join(s.system, "cmd/srvmonitor/main.go"), "\n// a change\n");
  const b = (await check(inputs)).inputs!;
  assert.notEqual(b.hash, a.hash);
  assert.equal(await stage2(), before, "a Go source change must not change the configure stage");
  // An embedded or data file in a program's folder is the program's too.
  fs.writeFileSync(path.join(s.system, "cmd/srvmonitor/page.txt"), "embedded\n");
  assert.notEqual((await check(inputs)).inputs!.hash, b.hash);
  assert.equal(await stage2(), before);
  // go.sum is the module's.
  fs.writeFileSync(path.join(s.system, "go.sum"), "");
  assert.equal(await stage2(), before);

  // setup.sh and the skeleton: stage 2 changes, the Go layer does not.
  const c = (await check(inputs)).inputs!.hash;
  fs.appendFileSync(path.join(s.system, "setup.sh"), "\n# a change\n");
  fs.writeFileSync(path.join(s.system, "root/etc/monitor.d/extra"), "#!/bin/sh\necho extra\n", { mode: 0o755 });
  assert.notEqual(await stage2(), before);
  assert.equal((await check(inputs)).inputs!.hash, c);
});

test("setup.sh does not see the Go module at /mnt (it is not part of the configure stage's key); it sees the rest of the system folder", { timeout: 5 * 60_000 }, async (t) => {
  const problem = hostProblem("x86_64");
  if (problem) {
    t.skip(problem);
    return;
  }
  const s = scratch(t);
  const stage1 = path.join(s.dir, "stage1");
  const base = execFileSync("bash", [path.join(repo, "scripts", "testsys.sh"), "x86_64"], { encoding: "utf8" }).trim().split("\n").pop()!;
  execFileSync("cp", ["-a", `${base}/.`, stage1]);
  fs.writeFileSync(path.join(s.system, "notes.txt"), "not Go\n");
  fs.writeFileSync(path.join(s.system, "setup.sh"), [
    "#!/bin/sh -e",
    'echo "cmd: $(ls -A /mnt/cmd/srvmonitor | wc -l) go.mod: $(wc -c < /mnt/go.mod) notes: $(cat /mnt/notes.txt) packages: $(test -f /mnt/packages && echo yes)"',
    "",
  ].join("\n"), { mode: 0o755 });
  const out = path.join(s.dir, "out");
  fs.mkdirSync(out);
  const lines: string[] = [];
  await configureRootfs({ packages: stage1, skeleton: path.join(s.system, "root"), setup: path.join(s.system, "setup.sh"), arch: "x86_64", out, log: (l) => lines.push(l) });
  assert.ok(lines.some((l) => l.includes("cmd: 0 go.mod: 0 notes: not Go packages: yes")), lines.join("\n"));
  // The module is still there for the Go build.
  assert.ok(fs.readFileSync(path.join(s.system, "go.mod"), "utf8").length > 0);
  assert.deepEqual(await mountsUnder(s.dir), [], "a mount was left");
});

test("a cmd/ folder that is not a main package is named in preview; a compile error stops the build with the compiler's messages and leaves nothing in the store", async (t) => {
  const s = scratch(t);
  const inputs = { system: s.system, arch: "aarch64" };
  fs.mkdirSync(path.join(s.system, "cmd/helpers"));
  fs.writeFileSync(path.join(s.system, "cmd/helpers/helpers.go"), "// Package helpers is a library.\npackage helpers\n\nfunc Twice(n int) int { return 2 * n }\n");
  const c = await check(inputs);
  assert.equal(c.failures?.length, 1);
  assert.match(c.failures![0].reason, /system\/cmd\/helpers is not a main package \(.*system\/cmd\/helpers\/helpers\.go says package helpers\): each folder of .*system\/cmd\/ is a program/);
  fs.rmSync(path.join(s.system, "cmd/helpers"), { recursive: true });
  fs.mkdirSync(path.join(s.system, "cmd/empty"));
  assert.match((await check(inputs)).failures![0].reason, /system\/cmd\/empty is not a main package: it has no Go files/);
  fs.rmSync(path.join(s.system, "cmd/empty"), { recursive: true });

  fs.writeFileSync(path.join(s.system, "cmd/srvmonitor/broken.go"), "package main\n\nfunc broken() int {\n\treturn undefinedThing\n}\n");
  const ok = await check(inputs);
  assert.deepEqual(ok.failures ?? [], []);
  await assert.rejects(goprograms.create(ok.inputs!), (e: any) => {
    assert.match(e.message, /go build in .*system\/ failed \(go1\.\d+[^)]*, linux\/arm64\):\n[\s\S]*\ncmd\/srvmonitor\/broken\.go:4:9: undefined: undefinedThing/);
    return true;
  });
  assert.deepEqual(listStore(s.store).filter((f) => f.startsWith("goprograms/") || f.startsWith("sums/goprograms/") || f.includes(".tmp")), [], "something of the failed build is in the store");
});

test("a system folder with a go.mod on a machine without Go: preview says how to get it; the Go npm run setup provisions is found", async (t) => {
  const goDir = path.dirname(findGo().go);
  const empty = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-nogo-"));
  const noGoPath = (process.env.PATH ?? "").split(":").filter((d) => d && !fs.existsSync(path.join(d, "go"))).join(":");
  const s = scratch(t, { PATH: noGoPath, RAMROOT_CACHE: empty });
  t.after(() => fs.rmSync(empty, { recursive: true, force: true }));
  const c = await check({ system: s.system, arch: "aarch64" });
  assert.equal(c.failures?.length, 1);
  assert.match(c.failures![0].reason, /building the system's Go programs needs Go, and there is none on PATH: run `npm run setup` .*golang-go.*module proxy.*or install Go 1\.21 or later from https:\/\/go\.dev\/dl\//);
  // What npm run setup provisions (scripts/provision-go.sh) is found through RAMROOT_CACHE/go-bin.
  fs.writeFileSync(path.join(empty, "go-bin"), `${goDir}\n`);
  assert.deepEqual((await check({ system: s.system, arch: "aarch64" })).failures ?? [], []);
  assert.equal(findGo().go, path.join(goDir, "go"));
});

test("the same source built twice, in two stores and with two build caches (one cold), gives the same bytes; the warm cache is reused", { timeout: 20 * 60_000 }, async (t) => {
  const out: Array<{ segment: Buffer; binary: Buffer; seconds: number }> = [];
  for (const cold of [false, true]) {
    const cache = cold ? fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-gocache-")) : undefined;
    await t.test(cold ? "a cold build cache" : "ramroot's build cache", async (t2) => {
      const s = scratch(t2, cache ? { RAMROOT_CACHE: cache } : {});
      if (cache) t2.after(() => fs.rmSync(cache, { recursive: true, force: true }));
      let segment = "";
      // Both architectures with ramroot's cache; the cold one for aarch64 only (a minute per arch).
      for (const arch of cold ? ["aarch64"] : ["aarch64", "x86_64"]) {
        const t0 = performance.now();
        const o = await build({ system: s.system, arch });
        const seconds = (performance.now() - t0) / 1000;
        assert.ok(o.path.startsWith(s.store) && o.tree.startsWith(s.store));
        assert.deepEqual(o.programs, ["srvmonitor"]);
        const binary = fs.readFileSync(path.join(o.tree, "usr/local/bin/srvmonitor"));
        // An ELF for the image's architecture: e_machine 183 (AArch64) or 62 (x86-64), static.
        assert.equal(binary.readUInt16LE(18), arch === "aarch64" ? 183 : 62);
        assert.equal(fs.statSync(path.join(o.tree, "usr/local/bin/srvmonitor")).mode & 0o7777, 0o755);
        if (arch === "aarch64") {
          out.push({ segment: fs.readFileSync(o.path), binary, seconds });
          segment = o.path;
        }
        console.log(`# ${cold ? "cold" : "warm"} build cache, ${arch}: ${seconds.toFixed(1)} s`);
      }
      // The segment: the folders and the program, root's, every time 0.
      const listing = execFileSync("sh", ["-c", `zstd -dc '${segment}' | cpio -itv --quiet`], { encoding: "utf8" });
      assert.match(listing, /^drwxr-xr-x\s+2 root\s+root\s+0 Jan  1  1970 usr\n.*usr\/local\n.*usr\/local\/bin\n-rwxr-xr-x\s+1 root\s+root\s+\d+ Jan  1  1970 usr\/local\/bin\/srvmonitor\n$/);
      // A second build of the same inputs in the same store builds nothing.
      const mark = fs.readFileSync(path.join(s.store, "journal.jsonl"), "utf8").split("\n").length;
      await build({ system: s.system, arch: "aarch64" });
      assert.equal(fs.readFileSync(path.join(s.store, "journal.jsonl"), "utf8").split("\n").length, mark);
    });
  }
  assert.equal(out.length, 2);
  assert.ok(out[0].binary.equals(out[1].binary), "the binaries differ between the two builds");
  assert.ok(out[0].segment.equals(out[1].segment), "the segments differ between the two builds");
  assert.ok(out[0].seconds < out[1].seconds / 3, `the warm build (${out[0].seconds.toFixed(1)} s) is not much faster than the cold one (${out[1].seconds.toFixed(1)} s): is the build cache reused?`);
});

test("probes: parsed and checked; a probe passes on the declared status and text, and a failure names the service", async (t) => {
  assert.deepEqual(parseProbes(undefined), []);
  assert.deepEqual(parseProbes([{ service: "srvmonitor", port: 80, path: "/uptime", expect: "up" }]), [{ service: "srvmonitor", port: 80, path: "/uptime", expect: "up" }]);
  assert.throws(() => parseProbes({ port: 80 }), /ramroot:probes is not a list of probes/);
  assert.throws(() => parseProbes([{ port: 0, path: "/" }]), /ramroot:probes\[0\]\.port is 0/);
  assert.throws(() => parseProbes([{ port: 80, path: "uptime" }]), /ramroot:probes\[0\]\.path is "uptime": give a path starting with \//);
  assert.throws(() => parseProbes([{ port: 80, path: "/", expects: "x" }]), /unknown key expects/);
  const seen: string[] = [];
  const srv = http.createServer((req, res) => {
    seen.push(req.url!);
    if (req.url === "/uptime") res.end(" 10:00:00 up 1 min, load average: 0.00\n");
    else res.writeHead(404).end("404 page not found\n");
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  t.after(() => srv.close());
  const port = (srv.address() as any).port;
  assert.equal((await runProbe({ service: "srvmonitor", port: 80, path: "/uptime", expect: "up" }, port)).ok, true);
  // Sent as written: no client-side cleaning of /../ or %2e%2e.
  assert.equal((await runProbe({ port: 80, path: "/../../bin/sh", status: 404 }, port)).ok, true);
  assert.equal((await runProbe({ port: 80, path: "/%2e%2e/%2e%2e/bin/sh", status: 404 }, port)).ok, true);
  assert.deepEqual(seen.slice(1), ["/../../bin/sh", "/%2e%2e/%2e%2e/bin/sh"]);
  const wrong = await runProbe({ service: "srvmonitor", port: 80, path: "/nope" }, port);
  assert.equal(wrong.ok, false);
  assert.match(wrong.problem!, /^service srvmonitor \(GET \/nope on guest port 80\) answered 404, ramroot:probes says 200: "404 page not found\\n"/);
  const text = await runProbe({ service: "srvmonitor", port: 80, path: "/uptime", expect: "down" }, port);
  assert.match(text.problem!, /service srvmonitor .* answered 200 without "down"/);
  const gone = await runProbe({ service: "srvmonitor", port: 80, path: "/", timeoutSeconds: 1 }, 1);
  assert.match(gone.problem!, /service srvmonitor \(GET \/ on guest port 80\) did not answer within 1 s \(ECONNREFUSED\)/);
});

test("the health hook under wait-then-poweroff: powers off only once the host's word comes on the console (busybox sh, dash)", { timeout: 60_000 }, async (t) => {
  for (const shell of ["busybox sh", "dash"]) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-hook-"));
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    // The hook with its paths moved into `dir`: the console read from a fifo, written to a file.
    const hook = HEALTH_HOOK.replace(/<\/dev\/console/g, `<${dir}/in`).replace(/\/dev\/console/g, `${dir}/console`).replace(/\/run\/ramroot/g, `${dir}/run`)
      .replace("/usr/lib/ramroot/health", "echo report").replace(/cfg=\S+/, `cfg=${dir}/cfg`).replace(/\n\tpoweroff\n/g, `\n\techo POWEROFF >>${dir}/out\n`);
    fs.writeFileSync(path.join(dir, "hook"), hook);
    fs.writeFileSync(path.join(dir, "cfg"), FW_CFG_WAIT_POWEROFF);
    execFileSync("mkfifo", [path.join(dir, "in")]);
    const child = spawn("sh", ["-c", `exec ${shell} ${dir}/hook`], { stdio: "ignore" });
    const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
    // Held open for writing: the reader never sees an end of file, as on a tty.
    const fd = fs.openSync(path.join(dir, "in"), "r+");
    try {
      fs.writeSync(fd, "some other line\n");
      await new Promise((r) => setTimeout(r, 700));
      assert.equal(fs.existsSync(path.join(dir, "out")), false, `${shell}: powered off before the host's word`);
      fs.writeSync(fd, `${CONSOLE_POWEROFF}\n`);
      assert.equal(await exited, 0);
      assert.equal(fs.readFileSync(path.join(dir, "out"), "utf8"), "POWEROFF\n", shell);
    } finally {
      fs.closeSync(fd);
      child.kill();
    }
  }
});

test("the layer over a rootfs whose /usr/local is not a 0755 root folder is refused, naming it", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-golayer-"));
  try {
    assert.equal(await layerProblem(dir), undefined);
    fs.mkdirSync(path.join(dir, "usr/local"), { recursive: true, mode: 0o755 });
    fs.chmodSync(path.join(dir, "usr"), 0o755);
    fs.chmodSync(path.join(dir, "usr/local"), 0o755);
    assert.equal(await layerProblem(dir), undefined);
    fs.chmodSync(path.join(dir, "usr/local"), 0o775);
    assert.match((await layerProblem(dir))!, /\/usr\/local in the rootfs is mode 775 owner 0:0, and the Go programs' layer makes it 0755 root:root/);
    fs.chmodSync(path.join(dir, "usr/local"), 0o755);
    fs.symlinkSync("../bin", path.join(dir, "usr/local/bin"));
    assert.match((await layerProblem(dir))!, /\/usr\/local\/bin in the rootfs is not a folder \(a symlink\)/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("the example boots in QEMU and its status page serves a monitor.d script; a change to srvmonitor rebuilds only the Go layer, its segment and the UKI; a probe not answered as declared fails the check naming the service", { timeout: 40 * 60_000 }, async (t) => {
  const p = Project.create();
  t.after(() => p.remove());
  await p.pulumi(["stack", "init", "qemu"]);
  const outputs = async () => JSON.parse((await p.pulumi(["stack", "output", "--json", "--stack", "qemu"])).stdout);
  const built = (since: number) => p.journal().slice(since).filter((e) => e.event === "built").map((e) => String(e.artifact));

  let first: Record<string, any> = {};
  await t.test("up from an empty store: srvmonitor runs in the guest and answers the example stack's probes", async () => {
    const t0 = performance.now();
    const r = await p.pulumi(["up", "--yes", "--stack", "qemu"]);
    console.log(`# first up: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    for (const l of new Set(r.stdout.split("\n").filter((l) => /\[goprograms|probe |console: ramroot|booted in/.test(l)).map((l) => l.replace(/^.*?(\[\w+\])/, "$1")))) console.log(`# ${l}`);
    first = await outputs();
    assert.match(r.stdout, /\[goprograms\] (built|reused) \/usr\/local\/bin\/srvmonitor with go1\.\d+\S* for aarch64/);
    assert.match(r.stdout, /probe srvmonitor: GET \/uptime answered 200 ".* up .*" in [\d.]+ s, as declared/);
    assert.match(r.stdout, /probe srvmonitor: GET \/\.\.\/\.\.\/bin\/sh answered 404 "404 page not found\\n"/);
    assert.match(r.stdout, /probe srvmonitor: GET \/%2e%2e\/%2e%2e\/bin\/sh answered 404 "404 page not found\\n"/);
    assert.match(r.stdout, /console: ramroot-health: result ok problems=0 mounts=1 services=\d+/);
    assert.doesNotMatch(r.stdout, /ramroot-health: service \w+ srvmonitor/);
    assert.match(r.stdout, /reported healthy, powered off in [\d.]+ s; the persistence image is clean/);
  });

  await t.test("a change to srvmonitor's source: preview and up change the Go layer, its segment, the UKI (and what boots it), nothing of the rootfs", async () => {
    const main = path.join(p.dir, "system/cmd/srvmonitor/main.go");
    const src = fs.readFileSync(main, "utf8");
    const changed = src.replace(`		for _, n := range names {`, `		fmt.Fprintln(w, "# srvmonitor, changed by the test")\n		for _, n := range names {`);
    assert.notEqual(changed, src);
    fs.writeFileSync(main, changed);
    // The guest must serve the new listing: probed at GET /.
    await p.pulumi(["config", "set", "--path", "ramroot:probes[3].service", "srvmonitor", "--stack", "qemu"]);
    await p.pulumi(["config", "set", "--path", "ramroot:probes[3].port", "80", "--stack", "qemu"]);
    await p.pulumi(["config", "set", "--path", "ramroot:probes[3].path", "/", "--stack", "qemu"]);
    await p.pulumi(["config", "set", "--path", "ramroot:probes[3].expect", "changed by the test\nuptime\nusb\n", "--stack", "qemu"]);
    assert.deepEqual(await p.previewSteps("qemu"), ["update boot", "update goprograms", "update media", "update uki"]);
    const mark = p.journal().length;
    const t0 = performance.now();
    const r = await p.pulumi(["up", "--yes", "--stack", "qemu"]);
    console.log(`# up after a source change: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    for (const l of new Set(r.stdout.split("\n").filter((l) => /\[goprograms|\[uki|\[initramfs|\[rootfs|probe |booted in/.test(l)).map((l) => l.replace(/^.*?(\[\w+\])/, "$1")))) console.log(`# ${l}`);
    const kinds = built(mark).map((a) => a.split("/")[0]).sort();
    assert.deepEqual(kinds, ["disk", "goprograms", "goprograms", "release", "uki"], `built: ${built(mark).join(", ")}`);
    assert.match(r.stdout, /probe srvmonitor: GET \/ answered 200 "# srvmonitor, changed by the test\\nuptime\\nusb\\n"/);
    const after = await outputs();
    assert.equal(after.rootfsHash, first.rootfsHash);
    assert.equal(after.initramfsHash, first.initramfsHash);
    assert.notEqual(after.ukiSha256, first.ukiSha256);
  });

  await t.test("a probe the service does not answer as declared fails up, naming the service; the guest still powers off cleanly", async () => {
    await p.pulumi(["config", "set", "--path", "ramroot:probes[3].path", "/no-such-script", "--stack", "qemu"]);
    const r = await p.pulumi(["up", "--yes", "--stack", "qemu"], { allowFail: true });
    assert.notEqual(r.code, 0);
    assert.match(r.stdout + r.stderr, /boot check of build [0-9a-f]{16} failed:\s*\n\s*- service srvmonitor \(GET \/no-such-script on guest port 80\) answered 404, ramroot:probes says 200/);
    // The guest still powered off cleanly: the persistence image is clean.
    assert.equal(spawnSync("fsck.vfat", ["-n", path.join(p.dir, ".ramroot", "persist", "qemu-aarch64.img")]).status, 0);
  });
});
