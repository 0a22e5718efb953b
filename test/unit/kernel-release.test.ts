import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { kernelRelease } from "../../src/image/uki";

const MiB = 1 << 20;

// An arm64-like image (no bzImage header): the banner found wherever it lies, also across the
// 4 MiB chunks the scan reads, and only as "Linux version X (" (a bare "Linux version " is not one).
test("kernelRelease: the banner anywhere in the image, across read chunks", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ramroot-krel-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const image = (size: number, at: number[], banner = "Linux version 6.1.0-56-arm64 (debian-kernel@lists.debian.org) #1 SMP") => {
    const b = Buffer.alloc(size, 0x41);
    for (const [k, a] of at.entries()) b.write(k === at.length - 1 ? banner : "Linux version \0junk", a, "latin1");
    const f = path.join(dir, `img-${size}-${at.join("-")}`);
    fs.writeFileSync(f, b);
    return f;
  };
  for (const at of [0, 1000, 4 * MiB - 20, 4 * MiB - 256, 4 * MiB - 255, 4 * MiB, 8 * MiB - 300, 9 * MiB - 100])
    assert.equal(await kernelRelease(image(9 * MiB, [at])), "6.1.0-56-arm64", `banner at ${at}`);
  // A false start before the real one, in the same chunk and in the one before.
  assert.equal(await kernelRelease(image(9 * MiB, [100, 200])), "6.1.0-56-arm64");
  assert.equal(await kernelRelease(image(9 * MiB, [4 * MiB - 5, 4 * MiB + 10])), "6.1.0-56-arm64");
  assert.equal(await kernelRelease(image(5 * MiB, [])), undefined);
  assert.equal(await kernelRelease(image(100, [50], "Linux version 6.1.0 (x")), "6.1.0");
  assert.equal(await kernelRelease(image(100, [80], "Linux version 6.1.0-56-arm64 (x")), undefined, "cut off by the end of the file: not a banner");
});
