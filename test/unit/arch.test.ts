import { test } from "node:test";
import assert from "node:assert/strict";
import { ARCH_NAMES, ARCHES, archOfBootFile, archOfPeMachine, archProblem, hostArch, isArch, removablePath, toArch } from "../../src/arch";

test("every architecture has every fact, and no two share one", () => {
  assert.deepEqual(ARCH_NAMES, ["aarch64", "x86_64"]);
  for (const key of ["console", "efiBootFile", "stub", "peMachine", "goarch", "debian", "node"] as const) {
    const values: unknown[] = ARCH_NAMES.map((a) => ARCHES[a][key]);
    assert.ok(values.every((v) => v !== undefined && v !== ""), `${key} missing`);
    assert.equal(new Set(values).size, values.length, `two architectures share ${key}`);
  }
});

test("names: Alpine's are taken, other tools' names are refused with the one to use", () => {
  assert.ok(isArch("aarch64") && isArch("x86_64"));
  assert.ok(!isArch("arm64") && !isArch("toString") && !isArch(undefined));
  assert.equal(toArch("x86_64"), "x86_64");
  assert.throws(() => toArch("arm64", "ramroot:arch"), /ramroot:arch arm64 is not an architecture ramroot builds for: use aarch64 or x86_64 \(arm64 is aarch64\)/);
  assert.throws(() => toArch("amd64"), /amd64 is x86_64/);
  assert.match(archProblem("riscv64", "--arch")!, /^--arch riscv64 .*use aarch64 or x86_64$/);
});

test("boot files and PE machines map back to their architecture", () => {
  assert.equal(removablePath("aarch64"), "EFI/BOOT/BOOTAA64.EFI");
  assert.equal(removablePath("x86_64"), "EFI/BOOT/BOOTX64.EFI");
  assert.equal(archOfBootFile("bootaa64.efi"), "aarch64");
  assert.equal(archOfBootFile("BOOTIA32.EFI"), undefined);
  assert.equal(archOfPeMachine(0x8664), "x86_64");
  assert.equal(archOfPeMachine(0xaa64), "aarch64");
  assert.equal(archOfPeMachine(0x14c), undefined);
  assert.equal(hostArch(), process.arch === "x64" ? "x86_64" : process.arch === "arm64" ? "aarch64" : process.arch);
});
