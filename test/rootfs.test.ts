// The rootfs from a declared system (system/packages, system/root, system/setup.sh) in
// two cached stages: packages (an offline base here; the real alpine-make-rootfs and apk run in
// test/alpine.test.ts) and configure (skeleton + setup.sh in a chroot).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as http from "node:http";
import * as os from "node:os";
import * as path from "node:path";
import { Project, repo } from "./project";
import { EXEC_DIRS, notExecutable, parsePackages, repositoryTags, SystemError, validateSystem } from "../src/rootfs/system";
import { configureRootfs, hostProblem, mountsUnder } from "../src/rootfs/configure";
import { APK_STATIC, apkProblem, BUILDER, builderEnv, fetchApkStatic, fetchBuilder, stripColour } from "../src/rootfs/alpine";
import { Store } from "../src/store";
import { listingFile, makeMountPoints } from "../src/rootfs/rootfs";
import { readListing, walk } from "../src/image/walk";
import { handlers as rootfs } from "../components/rootfs";

const built = (p: Project, since: number) => p.journal().slice(since).filter((e) => e.event === "built").map((e) => String(e.artifact));
const stage = (artifacts: string[], prefix: string) => artifacts.filter((a) => a.startsWith(prefix + "/"));
const testsys = (arch: string) => execFileSync("bash", [path.join(repo, "scripts", "testsys.sh"), arch], { encoding: "utf8" }).trim().split("\n").pop()!;
const tmpdir = (t: { after(f: () => void): void }, prefix: string) => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.after(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
};
const sha256 = (b: Buffer | string) => createHash("sha256").update(b).digest("hex");

/** A copy of the example system plus files whose effect the guest prints at boot. */
function markSystem(dir: string, says: string): void {
  fs.writeFileSync(path.join(dir, "root", "etc", "ramroot-skeleton-test"), `${says}\n`);
  fs.writeFileSync(path.join(dir, "root", "etc", "local.d", "10-rootfs-test.start"),
    "#!/bin/sh\n" +
    'echo "ramroot: skeleton says $(cat /etc/ramroot-skeleton-test)"\n' +
    'echo "ramroot: setup.sh says $(cat /etc/ramroot-setup-test)"\n' +
    'echo "ramroot: default runlevel:" $(ls /etc/runlevels/default)\n' +
    'echo "ramroot: boot runlevel:" $(ls /etc/runlevels/boot)\n', { mode: 0o755 });
  fs.appendFileSync(path.join(dir, "setup.sh"), '\necho "ran in a chroot on $(uname -m)" > /etc/ramroot-setup-test\n');
}

test("system/ validation: packages, executable folders, setup.sh, host checks", async (t) => {
  assert.deepEqual(parsePackages("# comment\n\nalpine-base\nlinux-lts # the kernel\nfoo=1.2-r0\nbar>=2\nbaz<3\nqux~1.2\nso:libc.musl-x86_64.so.1\ntailscale@community\n!conflict\npy3-foo_bar+x\n"),
    ["alpine-base", "linux-lts", "foo=1.2-r0", "bar>=2", "baz<3", "qux~1.2", "so:libc.musl-x86_64.so.1", "tailscale@community", "!conflict", "py3-foo_bar+x"]);
  for (const bad of ["foo;reboot", "$(id)", "a|b", "`x`", "foo&", "x>y>z", "a'b", "-rf", "a/b"])
    assert.throws(() => parsePackages(`ok\n${bad}\n`, "system/packages"), (e: any) => e instanceof SystemError && e.message.startsWith("system/packages:2:") && e.message.includes("not an apk package name"), bad);
  assert.throws(() => parsePackages("openssh openrc\n", "system/packages"), /system\/packages:1: "openssh openrc" holds several words: put one package per line/);

  const dir = tmpdir(t, "ramroot-system-");
  fs.cpSync(path.join(repo, "system"), dir, { recursive: true });
  assert.deepEqual(await notExecutable(path.join(dir, "root")), [], "the example system has a non-executable script");
  const sys = await validateSystem(dir, { shown: "system", needPackages: true });
  assert.ok(sys.packages!.includes("alpine-base") && sys.packages!.includes("systemd-efistub"));
  assert.equal(sys.setup, path.join(dir, "setup.sh"));
  for (const rel of ["etc/init.d/foo", "etc/periodic/daily/backup", "etc/profile.d/x.sh", "usr/local/bin/tool", "opt/hooks/run"]) {
    fs.mkdirSync(path.join(dir, "root", path.dirname(rel)), { recursive: true });
    fs.writeFileSync(path.join(dir, "root", rel), "#!/bin/sh\n", { mode: 0o644 });
  }
  assert.deepEqual(await notExecutable(path.join(dir, "root")), ["etc/init.d/foo", "etc/periodic/daily/backup", "etc/profile.d/x.sh", "usr/local/bin/tool"]);
  assert.deepEqual(await notExecutable(path.join(dir, "root"), [...EXEC_DIRS, "opt/hooks"]), ["etc/init.d/foo", "etc/periodic/daily/backup", "etc/profile.d/x.sh", "opt/hooks/run", "usr/local/bin/tool"]);

  // Not root, or a foreign architecture without qemu-user binfmt: what to do, named.
  assert.match(hostProblem("x86_64", { uid: 1000, hostArch: "x86_64" })!, /needs root .* privileged container/);
  assert.equal(hostProblem("x86_64", { uid: 0, hostArch: "x86_64" }), undefined);
  const binfmt = tmpdir(t, "ramroot-binfmt-");
  assert.match(hostProblem("aarch64", { uid: 0, hostArch: "x86_64", binfmtDir: binfmt })!, /qemu-user .* apt-get install qemu-user-static binfmt-support/);
  fs.writeFileSync(path.join(binfmt, "qemu-aarch64"), "disabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\n");
  assert.match(hostProblem("aarch64", { uid: 0, hostArch: "x86_64", binfmtDir: binfmt })!, /disabled: update-binfmts --enable qemu-aarch64/);
  fs.writeFileSync(path.join(binfmt, "qemu-aarch64"), "enabled\ninterpreter /usr/bin/qemu-aarch64\nflags: \n");
  assert.match(hostProblem("aarch64", { uid: 0, hostArch: "x86_64", binfmtDir: binfmt })!, /without the F flag/);
  fs.writeFileSync(path.join(binfmt, "qemu-aarch64"), "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\n");
  assert.equal(hostProblem("aarch64", { uid: 0, hostArch: "x86_64", binfmtDir: binfmt }), undefined);
});

test("repositories, @tags, apk and keys: checked before anything is built", async (t) => {
  // A name@tag line needs its tag in ramroot:repositories; without them, no tag is defined.
  assert.deepEqual(parsePackages("alpine-base\ndosfstools@local\n", "system/packages", new Set(["@local"])), ["alpine-base", "dosfstools@local"]);
  assert.throws(() => parsePackages("alpine-base\ntailscale@community\n", "system/packages", new Set()),
    /system\/packages:2: "tailscale@community" pins the repository @community, which ramroot:repositories does not define: add "@community URL" to ramroot:repositories/);
  assert.deepEqual([...repositoryTags(["https://dl-cdn.alpinelinux.org/alpine/v3.20/main", "@edge https://dl-cdn.alpinelinux.org/alpine/edge/main", "/srv/repo"])], ["@edge"]);
  for (const bad of ["dl-cdn.alpinelinux.org/alpine", "@tag", "@x y z", "https://a b", "@bad;tag https://x"])
    assert.throws(() => repositoryTags(["https://ok/main", bad]), (e: any) => e instanceof SystemError && e.message.startsWith(`ramroot:repositories line 2 "${bad}" is not "[@tag ]URL"`), bad);
  assert.throws(() => repositoryTags([]), /ramroot:repositories is empty/);
  // The builder gets the repositories file and the apk program through its own variables.
  const env = builderEnv({ arch: "aarch64", packages: ["a"], apk: "/opt/apk", reposFile: "/tmp/r" }, "/cache");
  assert.equal(env.APK, "/opt/apk");
  assert.equal(env.REPOS_FILE, "/tmp/r");

  const dir = tmpdir(t, "ramroot-apk-");
  const keys = path.join(dir, "keys");
  fs.mkdirSync(path.join(keys, "aarch64"), { recursive: true });
  assert.deepEqual(apkProblem({ keysDir: keys, arch: "aarch64", hostArch: "x86_64" }),
    { key: "keysDir", message: `ramroot:keysDir ${keys} holds folders (aarch64/): point it at the folder that holds the *.rsa.pub keys themselves (e.g. ${keys}/aarch64)` });
  const flat = path.join(keys, "aarch64");
  assert.match(apkProblem({ keysDir: flat, arch: "aarch64", hostArch: "x86_64" })!.message, /holds no \*\.rsa\.pub key/);
  fs.writeFileSync(path.join(flat, "alpine-devel@lists.alpinelinux.org-616ae350.rsa.pub"), "-----BEGIN PUBLIC KEY-----\n");
  assert.equal(apkProblem({ keysDir: flat, arch: "aarch64", hostArch: "x86_64" }), undefined);
  // No keys at all: fine for x86_64 (the builder embeds those), not for aarch64.
  assert.equal(apkProblem({ arch: "x86_64", hostArch: "x86_64", hostKeys: path.join(dir, "none") }), undefined);
  assert.match(apkProblem({ arch: "aarch64", hostArch: "x86_64", hostKeys: path.join(dir, "none") })!.message, /aarch64 packages are signed with keys that alpine-make-rootfs does not embed, and this host has no \/etc\/apk\/keys: set ramroot:keysDir/);
  // ramroot:apk: missing, not executable, not an apk.
  const apk = path.join(dir, "apk");
  assert.match(apkProblem({ apk, arch: "x86_64" })!.message, new RegExp(`ramroot:apk ${apk} does not exist`));
  fs.writeFileSync(apk, "#!/bin/sh\necho 'not apk at all' >&2\nexit 3\n", { mode: 0o644 });
  assert.match(apkProblem({ apk, arch: "x86_64" })!.message, new RegExp(`ramroot:apk ${apk} is not executable: chmod \\+x ${apk}`));
  fs.chmodSync(apk, 0o755);
  assert.match(apkProblem({ apk, arch: "x86_64" })!.message, /does not run here \(`.* --version` exited 3: not apk at all\)/);
  fs.writeFileSync(apk, "#!/bin/sh\necho 'apk-tools 2.14.4, compiled for x86_64.'\n");
  assert.equal(apkProblem({ apk, arch: "x86_64", keysDir: flat }), undefined);
  // A build host without apk and without a pinned apk.static for its architecture.
  assert.match(apkProblem({ arch: "x86_64", hostArch: "riscv64" })?.message ?? "no problem (this host has an apk on PATH)", /riscv64 host has no apk .* set ramroot:apk|apk on PATH/);
  assert.equal(stripColour("\x1b[1;31mERROR:\x1b[0m unable to select packages"), "ERROR: unable to select packages");
});

test("the configure stage makes every mount point /etc/fstab names, or names the line it cannot", async (t) => {
  const dir = tmpdir(t, "ramroot-fstab-");
  const tree = path.join(dir, "tree");
  fs.mkdirSync(path.join(tree, "etc"), { recursive: true });
  fs.mkdirSync(path.join(tree, "srv"));
  fs.symlinkSync("/srv", path.join(tree, "data"));
  const fstab = (text: string) => fs.writeFileSync(path.join(tree, "etc", "fstab"), text);
  fstab([
    "# the persistence stick",
    "UUID=B61B-19E7 /media/usb vfat noatime,rw,fmask=177 0 0",
    "/dev/sdb1 none swap sw 0 0",
    "LABEL=x /data/disk ext4 defaults 0 2",
    "tmpfs /mnt/with\\040space tmpfs defaults 0 0",
    "proc /proc proc defaults 0 0",
    "",
  ].join("\n"));
  assert.deepEqual(await makeMountPoints(tree), ["/media/usb", "/data/disk", "/mnt/with space", "/proc"]);
  assert.equal(fs.statSync(path.join(tree, "media", "usb")).mode & 0o7777, 0o755);
  // Through the tree's own symlink (/data -> /srv), never the build host's.
  assert.ok(fs.statSync(path.join(tree, "srv", "disk")).isDirectory());
  assert.ok(!fs.existsSync(path.join(tree, "none")));
  assert.deepEqual(await makeMountPoints(tree), [], "a second run makes nothing");
  fs.writeFileSync(path.join(tree, "media", "file"), "");
  fstab("UUID=B61B-19E7 /media/usb vfat rw 0 0\n/dev/sdc1 /media/file/x vfat rw 0 0\n");
  await assert.rejects(makeMountPoints(tree), /configure: \/etc\/fstab:2 \(\/dev\/sdc1 on \/media\/file\/x\): cannot make the mount point \(ENOTDIR\)/);
  fstab("/dev/sdc1 /media/file vfat rw 0 0\n");
  await assert.rejects(makeMountPoints(tree), /\/etc\/fstab:1 \(\/dev\/sdc1 on \/media\/file\): \/media\/file is a file in the image, not a folder/);
  fstab("/dev/sdc1 media/x vfat rw 0 0\n");
  await assert.rejects(makeMountPoints(tree), /\/etc\/fstab:1 .*: the mount point is not an absolute path: write it as \/media\/x/);
  fstab("/dev/sdc1\n");
  await assert.rejects(makeMountPoints(tree), /\/etc\/fstab:1: "\/dev\/sdc1" has no mount point/);
});

test("apk.static: downloaded once into the store, refused unless its sha256 is the pinned one", async (t) => {
  const dir = tmpdir(t, "ramroot-apkstatic-");
  const store = new Store(path.join(dir, "store"));
  const bytes = Buffer.from("#!/bin/sh\necho apk-tools 2.14.4\n");
  const asked: string[] = [];
  const server = http.createServer((req, res) => (asked.push(req.url!), res.end(bytes)));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.after(() => server.close());
  const url = `http://127.0.0.1:${(server.address() as any).port}/apk.static`;
  // A stand-in host architecture, so that the real pins stay untouched.
  APK_STATIC["test-arch"] = { url, sha256: "0".repeat(64) };
  t.after(() => delete APK_STATIC["test-arch"]);
  await assert.rejects(fetchApkStatic(store, "test-arch"), new RegExp(`refusing ${url}: its sha256 is ${sha256(bytes)}, expected 0{64} \\(set ramroot:apk`));
  assert.deepEqual(fs.readdirSync(path.join(store.root, "tools")), [], "a refused apk.static was kept");
  APK_STATIC["test-arch"] = { url, sha256: sha256(bytes) };
  const got = await fetchApkStatic(store, "test-arch");
  assert.deepEqual(fs.readFileSync(got), bytes);
  assert.equal(fs.statSync(got).mode & 0o777, 0o755);
  assert.equal(await fetchApkStatic(store, "test-arch"), got);
  assert.equal(asked.length, 2, "downloaded again although it is in the store");
  await assert.rejects(fetchApkStatic(store, "riscv64"), /no pinned apk.static for a riscv64 build host: set ramroot:apk/);
  for (const arch of ["x86_64", "aarch64"]) assert.match(APK_STATIC[arch]!.sha256, /^[0-9a-f]{64}$/);
});

test("the builder is refused unless its sha256 is the pinned one, before it runs", async (t) => {
  const dir = tmpdir(t, "ramroot-builder-");
  const store = new Store(path.join(dir, "store"));
  const script = path.join(dir, "builder.sh");
  fs.writeFileSync(script, `#!/bin/sh\ntouch ${dir}/ran\n`);
  const url = `file://${script}`;
  await assert.rejects(fetchBuilder(store, url, BUILDER.sha256), new RegExp(`refusing to run ${url}: its sha256 is ${sha256(fs.readFileSync(script))}, expected ${BUILDER.sha256}`));
  assert.deepEqual(fs.existsSync(path.join(store.root, "builders")) ? fs.readdirSync(path.join(store.root, "builders")) : [], [], "a refused builder was kept");
  const ok = await fetchBuilder(store, url, sha256(fs.readFileSync(script)));
  assert.equal(fs.readFileSync(ok, "utf8"), fs.readFileSync(script, "utf8"));
  assert.ok(!fs.existsSync(path.join(dir, "ran")));
});

test("offline base, aarch64: skeleton and setup.sh in a foreign-architecture chroot, booted by the qemu stack", { timeout: 15 * 60_000 }, async (t) => {
  const problem = hostProblem("aarch64");
  if (problem) {
    console.log(`# skipped: ${problem}`);
    t.skip(problem);
    return;
  }
  const p = Project.create();
  t.after(() => p.remove());
  markSystem(path.join(p.dir, "system"), "from the skeleton");
  await p.pulumi(["stack", "init", "qemu"]);
  await p.pulumi(["config", "set", "ramroot:arch", "aarch64", "--stack", "qemu"]);
  await p.pulumi(["config", "set", "ramroot:base", "testsys", "--stack", "qemu"]);
  const res = await p.pulumi(["up", "--yes", "--stack", "qemu"]);
  // Offline base: the folder is copied into the store once (stage 2 links to it).
  assert.equal(stage(built(p, 0), "rootfs-packages").length, 1);
  assert.match(res.stdout, /console: ramroot: skeleton says from the skeleton/);
  assert.match(res.stdout, /console: ramroot: setup.sh says ran in a chroot on aarch64/);
  assert.match(res.stdout, /console: ramroot: default runlevel: acpid local srvmonitor sshd/);
  const o = JSON.parse((await p.pulumi(["stack", "output", "--json", "--stack", "qemu"])).stdout);
  const tree = path.join(p.dir, ".ramroot", "store", "rootfs", o.rootfsHash);
  assert.equal(fs.readlinkSync(path.join(tree, "etc", "runlevels", "default", "sshd")), "/etc/init.d/sshd");
  assert.equal(fs.statSync(path.join(tree, "etc", "local.d", "10-rootfs-test.start")).uid, 0);
  assert.equal(fs.statSync(tree).mode & 0o7777, 0o755);
  assert.deepEqual(await mountsUnder(p.dir), []);
});

test("a failing setup.sh: its output in the error, no artifact, no mounts left", { timeout: 5 * 60_000 }, async (t) => {
  const dir = tmpdir(t, "ramroot-failing-");
  const system = path.join(dir, "system");
  fs.cpSync(path.join(repo, "system"), system, { recursive: true });
  fs.writeFileSync(path.join(system, "setup.sh"), '#!/bin/sh -e\necho "setup: mounted: $(grep -c . /proc/mounts) mounts, /dev/null is $(ls /dev/null)"\necho "setup: about to fail" >&2\nfalse\necho never\n', { mode: 0o755 });
  const store = path.join(dir, "store");
  const env = process.env.RAMROOT_STORE;
  process.env.RAMROOT_STORE = store;
  t.after(() => (env === undefined ? delete process.env.RAMROOT_STORE : (process.env.RAMROOT_STORE = env)));
  const checked = await rootfs.check({}, { arch: "x86_64", system, base: testsys("x86_64") });
  assert.deepEqual(checked.failures, undefined);
  await assert.rejects(rootfs.create(checked.inputs!), (e: any) => {
    assert.match(e.message, /configure: setup.sh failed \(exit 1\) in the chroot; its output:/);
    assert.match(e.message, /setup: mounted: \d+ mounts, \/dev\/null is \/dev\/null/);
    assert.match(e.message, /setup: about to fail/);
    assert.doesNotMatch(e.message, /never/);
    return true;
  });
  assert.deepEqual(fs.existsSync(path.join(store, "rootfs")) ? fs.readdirSync(path.join(store, "rootfs")) : [], []);
  assert.deepEqual(await mountsUnder(dir), []);
  assert.ok(!fs.readFileSync("/proc/mounts", "utf8").includes(dir), "a mount is left under the store");
});

test("validation errors from pulumi preview name the file and the fix, and nothing is built", { timeout: 20 * 60_000 }, async (t) => {
  const p = Project.create();
  t.after(() => p.remove());
  await p.pulumi(["stack", "init", "qemu"]);
  await p.pulumi(["config", "set", "ramroot:arch", "x86_64", "--stack", "qemu"]);
  const sys = path.join(p.dir, "system");
  const fails = async (pattern: RegExp) => {
    const res = await p.pulumi(["preview", "--stack", "qemu"], { allowFail: true });
    assert.notEqual(res.code, 0, "preview succeeded");
    assert.match(res.stdout + res.stderr, pattern);
  };
  /** Applies a change to the project, checks preview fails with `pattern`, then undoes it. */
  const failsWith = async (name: string, change: () => Promise<void> | void, undo: () => Promise<void> | void, pattern: RegExp) =>
    t.test(name, async () => {
      await change();
      try {
        await fails(pattern);
      } finally {
        await undo();
      }
    });
  const file = (rel: string, text: string, mode = 0o644) => () => {
    fs.mkdirSync(path.dirname(path.join(sys, rel)), { recursive: true });
    fs.writeFileSync(path.join(sys, rel), text, { mode });
  };
  const rm = (rel: string) => () => fs.rmSync(path.join(sys, rel), { recursive: true, force: true });
  const keep = (rel: string) => {
    const saved = fs.readFileSync(path.join(sys, rel));
    const mode = fs.statSync(path.join(sys, rel)).mode;
    return () => {
      fs.writeFileSync(path.join(sys, rel), saved);
      fs.chmodSync(path.join(sys, rel), mode);
    };
  };

  await failsWith("no skeleton folder", () => fs.renameSync(path.join(sys, "root"), path.join(sys, "root.away")), () => fs.renameSync(path.join(sys, "root.away"), path.join(sys, "root")),
    /the skeleton folder system\/root does not exist: create it/);
  await failsWith("a local.d script that is not executable", file("root/etc/local.d/50-x.start", "#!/bin/sh\n"), rm("root/etc/local.d/50-x.start"),
    /system\/root\/etc\/local.d\/50-x.start is in a folder whose files the system executes but not executable: chmod \+x system\/root\/etc\/local.d\/50-x.start/);
  await failsWith("a periodic job that is not executable", file("root/etc/periodic/daily/backup", "#!/bin/sh\n"), rm("root/etc/periodic"),
    /system\/root\/etc\/periodic\/daily\/backup is in a folder whose files the system executes but not executable/);
  await failsWith("a folder the stack declares in ramroot:execDirs",
    async () => {
      file("root/opt/hooks/run", "#!/bin/sh\n")();
      await p.pulumi(["config", "set", "ramroot:execDirs", '["opt/hooks"]', "--stack", "qemu"]);
    },
    async () => {
      rm("root/opt")();
      await p.pulumi(["config", "rm", "ramroot:execDirs", "--stack", "qemu"]);
    },
    /system\/root\/opt\/hooks\/run is in a folder whose files the system executes but not executable/);
  const packages = keep("packages");
  await failsWith("a package line with shell metacharacters", () => fs.appendFileSync(path.join(sys, "packages"), "curl;reboot\n"), packages,
    /system\/packages:\d+: "curl;reboot" is not an apk package name/);
  await failsWith("two packages on one line", () => fs.appendFileSync(path.join(sys, "packages"), "curl wget\n"), packages,
    /system\/packages:\d+: "curl wget" holds several words: put one package per line/);
  const setup = keep("setup.sh");
  await failsWith("setup.sh without a shebang", file("setup.sh", "rc-update add sshd default\n", 0o755), setup,
    /system\/setup.sh does not start with a shebang: make its first line #!\/bin\/sh -e/);
  await failsWith("setup.sh not executable", () => fs.chmodSync(path.join(sys, "setup.sh"), 0o644), setup,
    /system\/setup.sh is not executable: chmod \+x system\/setup.sh/);
  await failsWith("ramroot:base alpine without system/packages",
    async () => {
      rm("packages")();
      await p.pulumi(["config", "set", "ramroot:base", "alpine", "--stack", "qemu"]);
    },
    async () => {
      packages();
      await p.pulumi(["config", "rm", "ramroot:base", "--stack", "qemu"]);
    },
    /system\/packages does not exist: list the Alpine packages there/);

  const alpine = async (k: string, v: string) => {
    await p.pulumi(["config", "set", "ramroot:base", "alpine", "--stack", "qemu"]);
    await p.pulumi(["config", "set", `ramroot:${k}`, v, "--stack", "qemu"]);
  };
  const noAlpine = (k: string) => async () => {
    await p.pulumi(["config", "rm", "ramroot:base", "--stack", "qemu"]);
    await p.pulumi(["config", "rm", `ramroot:${k}`, "--stack", "qemu"]);
  };
  const keysDir = path.join(p.dir, "keys");
  fs.mkdirSync(path.join(keysDir, "x86_64"), { recursive: true });
  await failsWith("ramroot:keysDir holding folders (the builder would fail on them)", () => alpine("keysDir", keysDir), noAlpine("keysDir"),
    new RegExp(`ramroot:keysDir ${keysDir} holds folders \\(x86_64/\\): point it at the folder that holds the \\*\\.rsa\\.pub keys themselves`));
  await failsWith("ramroot:apk that does not run", () => alpine("apk", "/bin/false"), noAlpine("apk"),
    /ramroot:apk \/bin\/false does not run here/);
  await failsWith("a name@tag package without ramroot:repositories",
    async () => {
      fs.appendFileSync(path.join(sys, "packages"), "tailscale@community\n");
      await p.pulumi(["config", "set", "ramroot:base", "alpine", "--stack", "qemu"]);
    },
    async () => {
      packages();
      await p.pulumi(["config", "rm", "ramroot:base", "--stack", "qemu"]);
    },
    /system\/packages:\d+: "tailscale@community" pins the repository @community, which ramroot:repositories does not define/);

  await t.test("nothing was built, and the restored system previews cleanly", async () => {
    assert.deepEqual(built(p, 0), []);
    assert.deepEqual(await p.previewSteps("qemu"), ["create boot", "create goprograms", "create initramfs", "create media", "create rootfs", "create uki"]);
  });
});

test("configure links stage 1 and never writes through the links: what setup.sh changes is in the new tree only", { timeout: 5 * 60_000 }, async (t) => {
  const problem = hostProblem("x86_64");
  if (problem) {
    t.skip(problem);
    return;
  }
  const dir = tmpdir(t, "ramroot-linked-");
  const stage1 = path.join(dir, "stage1");
  execFileSync("cp", ["-a", `${testsys("x86_64")}/.`, stage1]);
  const put = (rel: string, text: string, mode = 0o644) => {
    fs.mkdirSync(path.dirname(path.join(stage1, rel)), { recursive: true });
    fs.writeFileSync(path.join(stage1, rel), text, { mode });
  };
  put("etc/appended", "one\n");
  put("etc/removed", "x\n");
  put("etc/chmodded", "x\n");
  put("etc/remade/gone", "gone\n");
  put("etc/keep/old", "old\n");
  // Everything but ctimes and link counts, which linking changes.
  const snapshot = (root: string) => execFileSync("sh", ["-c", `cd "$1" && find . -printf '%p %y %m %U %G %s %T@ %l\\n' | sort && find . -type f -exec sha256sum {} + | sort`, "sh", root], { encoding: "utf8" });
  const before = snapshot(stage1);
  const system = path.join(dir, "system");
  fs.mkdirSync(path.join(system, "root", "etc"), { recursive: true });
  fs.writeFileSync(path.join(system, "root", "etc", "skeleton-file"), "from the skeleton\n");
  // Modes are kept, setuid and setgid included (a chown to root would clear them).
  fs.mkdirSync(path.join(system, "root", "usr", "local", "bin"), { recursive: true });
  fs.writeFileSync(path.join(system, "root", "usr", "local", "bin", "suid-tool"), "#!/bin/sh\n");
  fs.chmodSync(path.join(system, "root", "usr", "local", "bin", "suid-tool"), 0o4755);
  fs.mkdirSync(path.join(system, "root", "srv", "shared"), { recursive: true });
  fs.chmodSync(path.join(system, "root", "srv", "shared"), 0o2775);
  fs.writeFileSync(path.join(system, "setup.sh"), [
    "#!/bin/sh -e",
    "echo two >> /etc/appended",
    "rm /etc/removed",
    "chmod 600 /etc/chmodded",
    "rm -rf /etc/remade && mkdir /etc/remade && echo fresh > /etc/remade/fresh",
    "echo new > /etc/keep/new && ln /etc/keep/new /etc/keep/new-link",
    "echo skeleton said: $(cat /etc/skeleton-file)",
    "",
  ].join("\n"), { mode: 0o755 });
  const out = path.join(dir, "out");
  fs.mkdirSync(out);
  const lines: string[] = [];
  const linked = await configureRootfs({ packages: stage1, skeleton: path.join(system, "root"), setup: path.join(system, "setup.sh"), arch: "x86_64", out, log: (l) => lines.push(l) });
  assert.equal(linked, true);
  assert.ok(lines.some((l) => l.includes("skeleton said: from the skeleton")), lines.join("\n"));
  assert.equal(snapshot(stage1), before, "stage 1 changed");
  const read = (rel: string) => fs.readFileSync(path.join(out, rel), "utf8");
  assert.equal(read("etc/appended"), "one\ntwo\n");
  assert.equal(fs.existsSync(path.join(out, "etc/removed")), false);
  assert.equal(fs.statSync(path.join(out, "etc/chmodded")).mode & 0o777, 0o600);
  assert.deepEqual(fs.readdirSync(path.join(out, "etc/remade")), ["fresh"]);
  assert.deepEqual(fs.readdirSync(path.join(out, "etc/keep")).sort(), ["new", "new-link", "old"]);
  assert.equal(fs.statSync(path.join(out, "etc/keep/new")).ino, fs.statSync(path.join(out, "etc/keep/new-link")).ino);
  assert.equal(read("etc/skeleton-file"), "from the skeleton\n");
  assert.equal(fs.statSync(path.join(out, "etc/skeleton-file")).uid, 0);
  assert.equal(fs.statSync(path.join(out, "usr/local/bin/suid-tool")).mode & 0o7777, 0o4755);
  assert.equal(fs.statSync(path.join(out, "srv/shared")).mode & 0o7777, 0o2775);
  // What nobody touched is stage 1's own file, not a copy.
  assert.equal(fs.statSync(path.join(out, "etc/keep/old")).ino, fs.statSync(path.join(stage1, "etc/keep/old")).ino);
  assert.equal(fs.existsSync(path.join(out, "mnt")), fs.existsSync(path.join(stage1, "mnt")));
  assert.deepEqual(fs.readdirSync(dir).sort(), ["out", "stage1", "system"], "scratch folders left beside the tree");
  assert.deepEqual(await mountsUnder(dir), []);
});

test("setup.sh runs contained: no host file, process, secret, sysctl, disk or network within its reach", { timeout: 5 * 60_000 }, async (t) => {
  const problem = hostProblem("x86_64");
  if (problem) {
    t.skip(problem);
    return;
  }
  const dir = tmpdir(t, "ramroot-contained-");
  const stage1 = path.join(dir, "stage1");
  execFileSync("cp", ["-a", `${testsys("x86_64")}/.`, stage1]);
  // What a build process holds: a secret in its environment (the language host has the stack's
  // decrypted config there), a file on the host (the passphrase), a listening service.
  const secret = `ramroot-secret-${Date.now()}`;
  process.env.RAMROOT_TEST_SECRET = secret;
  t.after(() => delete process.env.RAMROOT_TEST_SECRET);
  const hostFile = path.join(dir, "host-passphrase");
  fs.writeFileSync(hostFile, `${secret}\n`, { mode: 0o600 });
  const escaped = path.join(dir, "escaped");
  const server = http.createServer((_req, res) => res.end("reached the host\n"));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.after(() => server.close());
  const port = (server.address() as any).port;
  const rootDev = fs.statSync("/").dev;
  const [major, minor] = [Math.floor(rootDev / 256) & 0xfff, (rootDev & 0xff) | ((rootDev >> 12) & 0xfff00)];
  const domainname = fs.readFileSync("/proc/sys/kernel/domainname", "utf8");
  const system = path.join(dir, "system");
  fs.mkdirSync(system);
  // The classic way out of a chroot for root (chroot into a subfolder, climb, chroot "."), as a
  // static program: busybox's chroot changes into the new root, which closes that door.
  const escape = `#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv) {
  mkdir("/tmp/.x", 0700);
  if (chroot("/tmp/.x") != 0) return 1;
  for (int i = 0; i < 64; i++) chdir("..");
  if (chroot(".") != 0) return 1;
  FILE *f = fopen(argv[1], "w");
  if (!f) return 1;
  fputs("escaped\\n", f);
  return fclose(f) != 0;
}
`;
  fs.writeFileSync(path.join(dir, "escape.c"), escape);
  const gcc = spawnSync("gcc", ["-static", "-O", "-o", path.join(system, "escape"), path.join(dir, "escape.c")], { encoding: "utf8" });
  if (gcc.status !== 0) t.diagnostic(`no static C compiler here (${gcc.error?.message ?? gcc.stderr.trim()}): the chroot-escape probe is not run`);
  fs.writeFileSync(path.join(system, "setup.sh"), [
    "#!/bin/sh",
    'echo "pid $$"',
    `[ ! -x ./escape ] || ./escape ${escaped}`,
    `for r in /proc/*/root; do echo x > "$r${escaped}" 2>/dev/null && echo "ESCAPED through $r"; cat "$r${hostFile}" 2>/dev/null; done`,
    "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep RAMROOT_TEST_SECRET",
    "env | grep RAMROOT_TEST_SECRET",
    "echo escaped > /proc/sys/kernel/domainname 2>/dev/null && echo 'WROTE a sysctl'",
    "mount -o remount,rw /proc/sys 2>/dev/null && echo 'REMOUNTED /proc/sys'",
    "touch /sys/ramroot 2>/dev/null && echo 'WROTE /sys'",
    `mknod /tmp/disk b ${major} ${minor} 2>/dev/null && echo 'MADE a disk node'`,
    "ls /dev | tr '\\n' ' '; echo",
    // (busybox nc: Debian's static busybox wget crashes without a terminal)
    `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 127.0.0.1 ${port} 2>/dev/null | grep -q 'reached the host' && echo 'REACHED the host network'`,
    "hostname escaped 2>/dev/null; echo \"processes: $(ls -d /proc/[0-9]* | wc -l)\"",
    "",
  ].join("\n"), { mode: 0o755 });
  const run = async (network: boolean) => {
    const out = path.join(dir, `out-${network}`);
    fs.mkdirSync(out);
    const lines: string[] = [];
    await configureRootfs({ packages: stage1, setup: path.join(system, "setup.sh"), arch: "x86_64", out, network, log: (l) => lines.push(l) });
    return lines.join("\n");
  };
  const text = await run(false);
  assert.match(text, /setup.sh: pid 1$/m, "setup.sh is not PID 1 of its own namespace");
  assert.doesNotMatch(text, /ESCAPED|WROTE|REMOUNTED|MADE|REACHED/);
  assert.ok(!text.includes(secret), `a secret of the build process reached setup.sh:\n${text}`);
  assert.ok(!fs.existsSync(escaped));
  assert.match(text, /setup.sh: fd full null pts random shm stderr stdin stdout tty urandom zero $/m);
  assert.equal(fs.readFileSync("/proc/sys/kernel/domainname", "utf8"), domainname);
  assert.notEqual(os.hostname(), "escaped");
  // ramroot:setupNetwork true: the host's network, and nothing else given back.
  const open = await run(true);
  assert.match(open, /setup.sh: REACHED the host network/);
  assert.doesNotMatch(open, /ESCAPED|WROTE|REMOUNTED|MADE a/);
  assert.deepEqual(await mountsUnder(dir), []);
});

test("where no overlay can be mounted (the store itself on overlayfs), configure copies stage 1 and still runs setup.sh", { timeout: 5 * 60_000 }, async (t) => {
  const problem = hostProblem("x86_64");
  if (problem) {
    t.skip(problem);
    return;
  }
  // A store on overlayfs, as in a container: the kernel refuses an overlay's upper layer there.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-no-overlay-"));
  for (const d of ["l", "u", "w", "m"]) fs.mkdirSync(path.join(dir, d));
  const m = path.join(dir, "m");
  execFileSync("mount", ["-t", "overlay", "overlay", "-o", `lowerdir=${dir}/l,upperdir=${dir}/u,workdir=${dir}/w`, m]);
  t.after(() => {
    execFileSync("umount", ["-l", m]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const stage1 = path.join(m, "stage1");
  execFileSync("cp", ["-a", `${testsys("x86_64")}/.`, stage1]);
  fs.writeFileSync(path.join(stage1, "etc", "appended"), "one\n");
  const system = path.join(dir, "system");
  fs.mkdirSync(system);
  fs.writeFileSync(path.join(system, "setup.sh"), "#!/bin/sh -e\necho two >> /etc/appended\n", { mode: 0o755 });
  const out = path.join(m, "out");
  fs.mkdirSync(out);
  const lines: string[] = [];
  const linked = await configureRootfs({ packages: stage1, setup: path.join(system, "setup.sh"), arch: "x86_64", out, log: (l) => lines.push(l) });
  assert.equal(linked, false);
  assert.ok(lines.some((l) => l.includes("copies stage 1 instead of linking it")), lines.join("\n"));
  assert.equal(fs.readFileSync(path.join(out, "etc", "appended"), "utf8"), "one\ntwo\n");
  assert.equal(fs.readFileSync(path.join(stage1, "etc", "appended"), "utf8"), "one\n");
  assert.notEqual(fs.statSync(path.join(out, "etc", "hostname")).ino, fs.statSync(path.join(stage1, "etc", "hostname")).ino);
  assert.deepEqual(fs.readdirSync(m).sort(), ["out", "stage1"], "scratch folders left beside the tree");
  assert.deepEqual(await mountsUnder(dir), [m]);
});
