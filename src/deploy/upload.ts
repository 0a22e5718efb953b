// The whole image to P.ramroot-new: over SFTP with many large writes in flight (throughput
// close to scp's, far above a naive stream), or through the host script's stdin on a server
// without SFTP. Either way the step fails only after timeoutMs without progress.
import * as fs from "node:fs";
import type { HostProtocol } from "./host-protocol";
import type { Log, Session } from "./ssh-session";
import { mb } from "./space";

export async function uploadWhole(s: Session, host: HostProtocol, file: string, size: number, log: Log): Promise<void> {
  const remote = host.files.upload;
  const progress = progressLog(size, log);
  const sftp = await s.sftp();
  if (sftp) {
    // fastPut opens the remote file with "w" first: even an empty image is written.
    await s.step(`upload to ${remote}`, s.timeoutMs, (touch) => new Promise<void>((resolve, reject) => {
      sftp.fastPut(file, remote, {
        concurrency: 16, chunkSize: 1024 * 1024, fileSize: size, mode: 0o600,
        step: (done) => { touch(); progress(done); },
      }, (err) => (err ? reject(err) : resolve()));
    }), true);
  } else {
    log("the server has no SFTP subsystem: uploading through cat");
    await s.step(`upload to ${remote}`, s.timeoutMs, (touch) => host.receive(() => {
      let done = 0;
      const rs = fs.createReadStream(file, { highWaterMark: 256 * 1024 });
      rs.on("data", (d) => { done += d.length; touch(); progress(done); });
      return rs;
    }), true);
  }
}

/** A log line per tenth of `size` reached (the highest one when a write crosses several). */
function progressLog(size: number, log: Log): (done: number) => void {
  const started = Date.now();
  let reported = 0;
  return (done) => {
    const tenth = size > 0 ? Math.floor((done * 10) / size) : 10;
    if (tenth <= reported) return;
    reported = tenth;
    const secs = Math.max((Date.now() - started) / 1000, 1e-3);
    log(`upload ${tenth * 10}% (${mb(done)} of ${mb(size)}, ${(done / 1e6 / secs).toFixed(1)} MB/s)`);
  };
}
