// tools/pulumi-language-nodejs, our Node.js language host: its own Go tests (how Run builds the
// program's argv and environment, the engine's arguments), vet and gofmt, run with the module
// cache scripts/provision-pulumi.sh fills, and its go.mod pinned to the SDK of the CLI we build.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { repo } from "./project";
import { findGo, ramrootCache } from "../src/image/golayer";

const dir = path.join(repo, "tools", "pulumi-language-nodejs");

function goEnv(): NodeJS.ProcessEnv {
  const cache = ramrootCache(process.env);
  return {
    ...process.env,
    GOPATH: process.env.GOPATH ?? path.join(cache, "gopath"),
    GOCACHE: process.env.GOCACHE ?? path.join(cache, "gocache"),
    CGO_ENABLED: "0",
    // Exactly the versions go.sum records: a go.mod that would need an edit is a failure.
    GOFLAGS: "-mod=readonly",
    GOWORK: "off",
  };
}

test("the language host's go.mod pins the SDK of the CLI version provision-pulumi.sh builds", () => {
  const script = fs.readFileSync(path.join(repo, "scripts", "provision-pulumi.sh"), "utf8");
  const version = /^PULUMI_VERSION=\$\{PULUMI_VERSION:-([0-9.]+)\}$/m.exec(script)?.[1];
  assert.ok(version, "no default PULUMI_VERSION in scripts/provision-pulumi.sh");
  const gomod = fs.readFileSync(path.join(dir, "go.mod"), "utf8");
  assert.match(gomod, new RegExp(`^\\s*github\\.com/pulumi/pulumi/sdk/v3 v${version.replace(/\./g, "\\.")}$`, "m"));
});

test("go vet, gofmt and go test of the language host", { timeout: 15 * 60_000 }, () => {
  const { go } = findGo();
  const env = goEnv();
  const run = (args: string[]) => execFileSync(go, args, { cwd: dir, env, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], maxBuffer: 16 << 20 });
  run(["vet", "."]);
  const gofmt = path.join(path.dirname(go), "gofmt");
  assert.equal(execFileSync(gofmt, ["-l", "."], { cwd: dir, encoding: "utf8" }), "", "gofmt -l names files to format");
  // -count=1: the result of this run, not a cached one.
  run(["test", "-count=1", "."]);
});
