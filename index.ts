// The ramroot program: the declared system (system/) becomes a root filesystem, an initramfs of
// content-addressed segments, a UKI, and then a qemu boot check (the qemu stack) or a deploy to
// the host's boot stick over SSH (production). Each layer is a resource named by the hash of its inputs, so `pulumi
// preview` says which layer changes, and both stacks share one store: production gets the very
// bytes the qemu stack booted.
// First, before anything loads the SDK: what the SDK loads but ramroot never uses waits for its first use.
import "./components/lazy-sdk";
import * as pulumi from "@pulumi/pulumi";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Rootfs } from "./components/rootfs";
import { Initramfs } from "./components/initramfs";
import { Uki } from "./components/uki";
import { SignedUki } from "./components/signed-uki";
import { readFileSync } from "node:fs";
import { BootMedia, type SshBootMediaArgs } from "./components/bootmedia";
import { BootCheck } from "./components/bootcheck";
import { Secrets } from "./components/secrets";
import { GoPrograms } from "./components/goprograms";
import { hasGoModule } from "./src/image/golayer";
import type { Probe } from "./src/boot/probe";
import { readSecretsDeclSync, saltCommand } from "./src/image/secrets";
import { ARCHES, toArch } from "./src/arch";

// Relative paths in config are relative to the project, not to dist/ where this runs.
const project = path.resolve(__dirname, "..");
const stack = pulumi.getStack();
const cfg = new pulumi.Config("ramroot");
const arch = toArch(cfg.get("arch") ?? "aarch64", "ramroot:arch");
const target = cfg.get("target") ?? (stack === "production" ? "production" : "qemu");
if (target !== "qemu" && target !== "production") throw new Error(`ramroot:target is ${target}: use qemu (boot the image under QEMU) or production (deploy it over SSH)`);
// One resolved path everywhere: ramroot:system may be relative to the project or absolute.
const system = cfg.get("system") ?? "system";
const systemDir = path.resolve(project, system);
// The packages stage's source: `alpine` (alpine-make-rootfs installs system/packages; needs the
// internet), a folder or tarball (an Alpine minirootfs), or `testsys`: the Debian-made test
// system, the default on ramroot's own machines, which cannot reach an Alpine mirror.
const base = cfg.get("base") ?? "testsys";

/** The base tree: undefined for alpine, a folder or tarball given in config, or the test system for the arch. */
function baseTree(): string | undefined {
  if (base === "alpine") return undefined;
  if (base !== "testsys") return path.resolve(project, base);
  return testsysTree();
}

/**
 * The test system's folder, without running scripts/testsys.sh when it was made before: the
 * script names its folder by the package versions apt offers, and asking apt (debs.sh) costs
 * 0.2 s to seconds on every preview. So the folder the script printed is remembered under a key
 * of what can change its output here (the arch, testsys.sh, debs.sh), and the script runs only
 * when that pointer is missing or its folder is incomplete. `npm run setup` runs the script
 * and writes the same pointer (scripts/setup.sh: the same key), picking up newer packages.
 */
function testsysTree(): string {
  const cache = process.env.RAMROOT_CACHE || path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache"), "ramroot");
  const script = path.join(project, "scripts", "testsys.sh");
  const key = createHash("sha256").update(`${arch}\n`).update(fs.readFileSync(script)).update(fs.readFileSync(path.join(project, "scripts", "debs.sh"))).digest("hex").slice(0, 16);
  const pointer = path.join(cache, "testsys", `${arch}.${key}.path`);
  const complete = (dir: string) => dir !== "" && fs.existsSync(path.join(dir, "etc", "ramroot-testsys"));
  try {
    const dir = fs.readFileSync(pointer, "utf8").trim();
    if (complete(dir)) return dir;
  } catch {}
  const out = execFileSync("bash", [script, arch], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
  const dir = out.trim().split("\n").pop()!;
  if (complete(dir)) {
    const tmp = `${pointer}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, dir + "\n");
    fs.renameSync(tmp, pointer);
  }
  return dir;
}

const rootfs = new Rootfs("rootfs", {
  arch,
  system,
  base: baseTree(),
  branch: cfg.get("branch"),
  mirror: cfg.get("mirror"),
  repositories: cfg.getObject<string[]>("repositories"),
  apk: cfg.get("apk") && path.resolve(project, cfg.get("apk")!),
  refresh: cfg.get("refresh"),
  builderUrl: cfg.get("builderUrl"),
  builderSha256: cfg.get("builderSha256"),
  keysDir: cfg.get("keysDir") && path.resolve(project, cfg.get("keysDir")!),
  execDirs: cfg.getObject<string[]>("execDirs"),
  setupNetwork: cfg.getBoolean("setupNetwork"),
  setupTimeout: cfg.getNumber("setupTimeout"),
});

const initramfs = new Initramfs("initramfs", {
  rootfs: rootfs.path,
  rootfsHash: rootfs.hash,
  compression: cfg.get("compression") ?? "zstd",
  level: cfg.getNumber("compressionLevel"),
});

// Secrets: declared in system/secrets (paths, modes, config keys), valued from this stack's
// encrypted config, in a layer of their own. A declared key that is not set stops preview here.
const secretDecls = readSecretsDeclSync(systemDir);
const secrets = secretDecls.length === 0 ? undefined : new Secrets("secrets", {
  system,
  rootfs: rootfs.path,
  rootfsHash: rootfs.hash,
  compression: cfg.get("compression") ?? "zstd",
  values: Object.fromEntries(secretDecls.map((d) => {
    const value = cfg.getSecret(d.key);
    if (value === undefined)
      throw new Error(`${path.join(system, "secrets")}:${d.line} declares ramroot:${d.key}, which is not set in stack ${stack}: pulumi config set --secret ramroot:${d.key} VALUE --stack ${stack}`);
    return [d.key, value];
  })),
  salt: cfg.getSecret("secretsSalt") ?? (() => {
    throw new Error(`${path.join(system, "secrets")} declares secrets, and stack ${stack} has no salt for them (it keeps the image from being predicted, and the secrets from being guessed offline): ${saltCommand(stack)} (npm run pulumi does this when it creates a stack)`);
  })(),
});

// The system's own Go programs (system/go.mod, system/cmd/NAME/ -> /usr/local/bin/NAME), in a
// layer of their own: nothing of the rootfs depends on it, so it builds while the rootfs does.
const programs = hasGoModule(systemDir) ? new GoPrograms("goprograms", {
  system,
  arch,
  compression: cfg.get("compression") ?? "zstd",
  level: cfg.getNumber("compressionLevel"),
}) : undefined;

const uki = new Uki("uki", {
  rootfs: rootfs.path,
  rootfsHash: rootfs.hash,
  initramfs: initramfs.files,
  initramfsHash: initramfs.hash,
  arch,
  // panic=10: a kernel that panics reboots after 10 s, so a trial boot falls back by itself.
  cmdline: cfg.get("cmdline") ?? `rdinit=/sbin/init console=tty1 console=${ARCHES[arch].console} panic=10`,
  kernel: cfg.get("kernel") ?? (base === "testsys" ? "boot/vmlinuz" : "boot/vmlinuz-lts"),
  stub: cfg.get("stub") ?? `usr/lib/systemd/boot/efi/${ARCHES[arch].stub}`,
  secrets: secrets?.path,
  secretsHash: secrets?.hash,
  programs: programs?.path,
  programsHash: programs?.hash,
});

// Secure Boot: with a key and its certificate, the UKI is signed in a step of its own
// (components/signed-uki.ts), and what boots or deploys takes the signed bytes. Without them,
// nothing changes.
const secureBootKey = cfg.getSecret("secureBootKey");
const secureBootCertValue = cfg.get("secureBootCert");
const secureBootPassphrase = cfg.getSecret("secureBootKeyPassphrase");
if (secureBootKey && !secureBootCertValue) throw new Error(`ramroot:secureBootKey is set in stack ${stack}, ramroot:secureBootCert is not: set the key's certificate (PEM), e.g. pulumi config set ramroot:secureBootCert -- "$(cat db.pem)" --stack ${stack}`);
if (secureBootCertValue && !secureBootKey) throw new Error(`ramroot:secureBootCert is set in stack ${stack}, ramroot:secureBootKey is not: set the private key as a secret, e.g. pulumi config set --secret ramroot:secureBootKey --stack ${stack} -- "$(cat db.key)"`);
if (secureBootPassphrase && !secureBootKey) throw new Error(`ramroot:secureBootKeyPassphrase is set in stack ${stack}, ramroot:secureBootKey is not: set the key, or remove the passphrase`);
if (cfg.get("secureBootVars") && !secureBootKey) throw new Error(`ramroot:secureBootVars is set in stack ${stack}, but the stack signs nothing: set ramroot:secureBootKey and ramroot:secureBootCert, or remove ramroot:secureBootVars`);
/** The certificate's PEM: the value itself, or a file it names (relative to the project). */
const secureBootCert = secureBootCertValue === undefined ? undefined : /-----BEGIN/.test(secureBootCertValue) ? secureBootCertValue : (() => {
  const file = path.resolve(project, secureBootCertValue);
  try {
    return readFileSync(file, "utf8");
  } catch (e: any) {
    throw new Error(`ramroot:secureBootCert is neither a PEM certificate (-----BEGIN CERTIFICATE-----) nor a file that can be read (${file}: ${e.code ?? e.message}): pulumi config set ramroot:secureBootCert -- "$(cat db.pem)" --stack ${stack}`);
  }
})();
const signed = secureBootKey && secureBootCert ? new SignedUki("signed", {
  uki: uki.path,
  ukiHash: uki.hash,
  ukiSha256: uki.sha256,
  cert: secureBootCert,
  key: secureBootKey,
  passphrase: secureBootPassphrase,
  containsSecrets: secrets !== undefined,
}) : undefined;
/** What the boot check boots and production deploys: the signed UKI when the stack signs. */
const image = { path: signed?.path ?? uki.path, sha256: signed?.sha256 ?? uki.sha256 };

export const rootfsHash = rootfs.hash;
export const initramfsHash = initramfs.hash;
export const ukiHash = uki.hash;
export const ukiPath = uki.path;
export const ukiSha256 = uki.sha256;
/** The signed UKI (null when the stack does not sign): what boots and deploys. */
export const signedUkiPath = signed?.path ?? null;
export const signedUkiSha256 = signed?.sha256 ?? null;
export const buildId = uki.buildId;
export const targetArch = arch;

export let deployed: pulumi.Output<string | null> | null = null;
export let disk: pulumi.Output<string> | null = null;
export let persist: pulumi.Output<string> | null = null;
export let bootSeconds: pulumi.Output<number> | null = null;
/** The guest's health report from the boot check (src/boot/health.ts). */
export let bootHealth: pulumi.Output<string> | null = null;

if (target === "qemu") {
  const media = new BootMedia("media", { kind: "qemu", arch, uki: image.path, ukiSha256: image.sha256, persistName: `${stack}-${arch}`, volumeId: cfg.get("volumeId"), containsSecrets: secrets !== undefined });
  // The guest's own /etc/local.d script prints this line with the build id it finds in
  // /etc/os-release, so the check proves that this very build came up. The check also waits for
  // ramroot's health report, the guest's clean power-off and a clean persistence image.
  const marker = uki.buildId.apply((id) => (cfg.get("bootMarker") ?? "ramroot: build {buildId} up").replace("{buildId}", id));
  const check = new BootCheck("boot", {
    arch,
    disk: media.disk,
    diskHash: media.hash,
    persist: media.persist,
    ukiSha256: image.sha256,
    buildId: uki.buildId,
    marker,
    timeoutSeconds: cfg.getNumber("bootTimeout"),
    memoryMiB: cfg.getNumber("qemuMemory"),
    probes: cfg.getObject<Probe[]>("probes"),
    stack,
    ...(signed ? { secureBoot: true, secureBootVars: cfg.get("secureBootVars") && path.resolve(project, cfg.get("secureBootVars")!) } : {}),
  });
  disk = media.disk;
  persist = media.persist;
  bootSeconds = check.seconds;
  bootHealth = check.health;
}

if (target === "production") {
  const host = cfg.get("host");
  if (!host) {
    pulumi.log.warn("ramroot:host is not set: this stack builds the image and deploys nothing (set ramroot:host, ramroot:hostKey and ramroot:sshPrivateKey to deploy)");
  } else {
    const args: SshBootMediaArgs = {
      kind: "ssh",
      host,
      port: cfg.getNumber("sshPort"),
      user: cfg.get("sshUser"),
      privateKey: cfg.getSecret("sshPrivateKey") ?? "",
      hostKey: cfg.get("hostKey") ?? "",
      // The firmware's removable path for the stack's architecture: BOOTX64.EFI on x86_64 (left
      // unset on aarch64, whose default BOOTAA64.EFI it is, so existing stacks see no change).
      path: cfg.get("bootPath") ?? (arch === "aarch64" ? undefined : `/media/usb/EFI/BOOT/${ARCHES[arch].efiBootFile}`),
      uki: image.path,
      ukiSha256: image.sha256,
      buildId: uki.buildId,
      allowUntested: cfg.getBoolean("allowUntested") ?? false,
      afterDeploy: cfg.getObject<string[]>("afterDeploy"),
      waitSeconds: cfg.getNumber("waitSeconds"),
      // Reboots and trial boots (components/deploy.ts).
      reboot: cfg.getBoolean("reboot") ?? false,
      trialBoot: cfg.getBoolean("trialBoot"),
      trialSeconds: cfg.getNumber("trialSeconds"),
      consoleLog: cfg.get("consoleLog") && path.resolve(project, cfg.get("consoleLog")!),
      // A stack that signs deploys only an image its certificate verifies.
      secureBootCert: signed ? secureBootCert : undefined,
    };
    const media = new BootMedia("media", args);
    deployed = media.remoteSha256;
  }
}
