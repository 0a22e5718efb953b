// The ramroot program: the declared system (system/) becomes a root filesystem, an initramfs of
// content-addressed segments, a UKI, and then either a qemu boot check or a deploy. Each layer
// is a resource named by the hash of its inputs, so `pulumi preview` says which layer changes.
import * as pulumi from "@pulumi/pulumi";
import { execFileSync } from "node:child_process";
import * as path from "node:path";
import { Rootfs } from "./components/rootfs";

// Relative paths in config are relative to the project, not to dist/ where this runs.
const project = path.resolve(__dirname, "..");
const cfg = new pulumi.Config("ramroot");
const arch = cfg.get("arch") ?? "aarch64";
if (arch !== "aarch64" && arch !== "x86_64") throw new Error(`ramroot:arch is ${arch}: use aarch64 or x86_64`);
const system = cfg.get("system") ?? "system";

/** The base tree: a folder given in config, or the Debian-made test system for the arch. */
function baseTree(): string {
  const base = cfg.get("base") ?? "testsys";
  if (base !== "testsys") return path.resolve(project, base);
  const out = execFileSync("bash", [path.join(project, "scripts", "testsys.sh"), arch], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
  return out.trim().split("\n").pop()!;
}

const rootfs = new Rootfs("rootfs", { base: baseTree(), skeleton: path.join(system, "root"), arch });

export const rootfsHash = rootfs.hash;
