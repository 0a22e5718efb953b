// Authenticode, the signature format UEFI Secure Boot checks, read in TypeScript: the image
// digest a signature covers (computed as EDK2's DxeImageVerificationLib does, streamed), and the
// signatures in a PE's certificate table (PKCS#7 SignedData around an SpcIndirectDataContent
// that holds the digest). Nothing here signs or checks a signature's cryptography: src/image/sign.ts
// does both with sbsigntool, and this module is how ramroot tells what a signed UKI covers and
// who signed it.
//
// The digest hashes the headers (SizeOfHeaders bytes) without the CheckSum field and the
// certificate table's directory entry, then each section's raw data in file order, then
// whatever lies between the last section and the certificate table. Implementations differ on
// bytes that no section holds between sections (osslsigncode hashes the file linearly, EDK2 and
// sbsign section by section): ramroot's UKIs have none (src/image/pe.ts), so all of them agree.
import { createHash, X509Certificate } from "node:crypto";
import * as fs from "node:fs/promises";
import { parsePe, PeHeaders, stringTableOffset, unsectioned, Unsectioned } from "./pe";

/** Digest algorithms by OID, as Node's crypto names them. */
const DIGESTS: Record<string, string> = {
  "1.3.14.3.2.26": "sha1",
  "2.16.840.1.101.3.4.2.1": "sha256",
  "2.16.840.1.101.3.4.2.2": "sha384",
  "2.16.840.1.101.3.4.2.3": "sha512",
};
const OID_SIGNED_DATA = "1.2.840.113549.1.7.2";
const OID_SPC_INDIRECT_DATA = "1.3.6.1.4.1.311.2.1.4";
const WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002;
const HEAD = 64 << 10;
const CHUNK = 4 << 20;

export interface AuthenticodeSignature {
  /** The digest algorithm of the image digest, as Node names it ("sha256"). */
  digestAlgorithm: string;
  /** The image digest the signature covers, hex. */
  digest: string;
  /** The signing certificate (the one the SignerInfo names), if the signature carries it. */
  signer?: { subject: string; issuer: string; serialNumber: string; fingerprint256: string };
  /** Subjects of every certificate the signature carries. */
  certificates: string[];
}

/** The headers of the PE `file` and its size. */
export async function readPe(file: string): Promise<{ pe: PeHeaders; size: number; head: Buffer }> {
  const fh = await fs.open(file, "r");
  try {
    const size = (await fh.stat()).size;
    const head = Buffer.alloc(Math.min(size, HEAD));
    await fh.read(head, 0, head.length, 0);
    return { pe: parsePe(head, file), size, head };
  } finally {
    await fh.close();
  }
}

/**
 * The Authenticode digest of the PE `file` (hex), with `algorithm` (a Node hash name), as EDK2
 * computes it: the value a signature of the file must hold for the firmware to accept it.
 */
export async function authenticodeDigest(file: string, algorithm = "sha256"): Promise<string> {
  const { pe, size } = await readPe(file);
  const hash = createHash(algorithm);
  const fh = await fs.open(file, "r");
  try {
    const feed = async (start: number, end: number) => {
      if (end > size) throw new Error(`${file} is truncated: it ends at ${size}, before ${end}`);
      const buf = Buffer.alloc(Math.min(CHUNK, Math.max(end - start, 0)));
      for (let pos = start; pos < end; ) {
        const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, end - pos), pos);
        if (bytesRead === 0) throw new Error(`${file} is truncated at ${pos}`);
        hash.update(buf.subarray(0, bytesRead));
        pos += bytesRead;
      }
    };
    // The headers, without CheckSum and the certificate table's directory entry.
    await feed(0, pe.checksumOffset);
    if (pe.securityDirOffset !== undefined) {
      await feed(pe.checksumOffset + 4, pe.securityDirOffset);
      await feed(pe.securityDirOffset + 8, pe.sizeOfHeaders);
    } else {
      await feed(pe.checksumOffset + 4, pe.sizeOfHeaders);
    }
    // The sections in file order.
    let hashed = pe.sizeOfHeaders;
    for (const s of pe.sections.filter((x) => x.sizeOfRawData > 0).sort((x, y) => x.pointerToRawData - y.pointerToRawData)) {
      await feed(s.pointerToRawData, s.pointerToRawData + s.sizeOfRawData);
      hashed += s.sizeOfRawData;
    }
    // EDK2: what the file holds beyond the bytes hashed so far, less the certificate table.
    const rest = size - pe.security.size;
    if (rest > hashed) await feed(hashed, rest);
  } finally {
    await fh.close();
  }
  return hash.digest("hex");
}

/**
 * The bytes of the PE `file` outside its headers, sections and certificate table: none in a UKI
 * that ramroot made; where there are some, Authenticode implementations disagree on the digest.
 */
export async function outsideSections(file: string): Promise<Unsectioned[]> {
  const { pe, size } = await readPe(file);
  let strings = 0;
  const at = stringTableOffset(pe);
  if (at !== undefined && at + 4 <= size) {
    const fh = await fs.open(file, "r");
    try {
      const b = Buffer.alloc(4);
      await fh.read(b, 0, 4, at);
      strings = Math.max(b.readUInt32LE(0), 4);
    } finally {
      await fh.close();
    }
  }
  return unsectioned(pe, size, strings);
}

/** The signatures in the certificate table of the PE `file`, in order; [] when it has none. */
export async function readSignatures(file: string): Promise<AuthenticodeSignature[]> {
  const { pe, size } = await readPe(file);
  const { virtualAddress: at, size: length } = pe.security;
  if (length === 0) return [];
  if (at + length > size) throw new Error(`${file}: its certificate table (${length} bytes at ${at}) ends past the end of the file`);
  const table = Buffer.alloc(length);
  const fh = await fs.open(file, "r");
  try {
    await fh.read(table, 0, length, at);
  } finally {
    await fh.close();
  }
  const out: AuthenticodeSignature[] = [];
  // WIN_CERTIFICATE entries: dwLength, wRevision, wCertificateType, then the data; each padded
  // to 8 bytes.
  for (let pos = 0; pos + 8 <= table.length; ) {
    const len = table.readUInt32LE(pos);
    const type = table.readUInt16LE(pos + 6);
    if (len < 8 || pos + len > table.length) throw new Error(`${file}: a malformed certificate table entry at ${at + pos}`);
    if (type === WIN_CERT_TYPE_PKCS_SIGNED_DATA) out.push(parseSignedData(table.subarray(pos + 8, pos + len), file));
    pos += Math.ceil(len / 8) * 8;
  }
  return out;
}

// ---- A DER reader: just enough of ASN.1 for PKCS#7 SignedData.

interface Node { tag: number; start: number; content: number; end: number }

function readNode(buf: Buffer, pos: number, what: string): Node {
  if (pos + 2 > buf.length) throw new Error(`${what}: truncated DER`);
  const tag = buf[pos];
  let len = buf[pos + 1];
  let content = pos + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4) throw new Error(`${what}: unsupported DER length (indefinite or over 4 GiB)`);
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[content + i];
    content += n;
  }
  if (content + len > buf.length) throw new Error(`${what}: truncated DER`);
  return { tag, start: pos, content, end: content + len };
}

function children(buf: Buffer, n: Node, what: string): Node[] {
  const out: Node[] = [];
  for (let pos = n.content; pos < n.end; ) {
    const c = readNode(buf, pos, what);
    out.push(c);
    pos = c.end;
  }
  return out;
}

function oid(buf: Buffer, n: Node): string {
  const b = buf.subarray(n.content, n.end);
  const parts: number[] = [];
  let v = 0;
  for (const byte of b) {
    v = v * 128 + (byte & 0x7f);
    if (!(byte & 0x80)) {
      if (parts.length === 0) parts.push(v < 80 ? Math.floor(v / 40) : 2, v < 80 ? v % 40 : v - 80);
      else parts.push(v);
      v = 0;
    }
  }
  return parts.join(".");
}

function parseSignedData(der: Buffer, file: string): AuthenticodeSignature {
  const what = `${file}: its signature`;
  const expect = (n: Node | undefined, tag: number, name: string): Node => {
    if (!n || n.tag !== tag) throw new Error(`${what} is not Authenticode PKCS#7 (no ${name})`);
    return n;
  };
  const top = expect(readNode(der, 0, what), 0x30, "ContentInfo");
  const [type, explicit] = children(der, top, what);
  if (oid(der, expect(type, 0x06, "content type")) !== OID_SIGNED_DATA) throw new Error(`${what} is not PKCS#7 SignedData`);
  const sd = expect(children(der, expect(explicit, 0xa0, "content"), what)[0], 0x30, "SignedData");
  const parts = children(der, sd, what);
  // version, digestAlgorithms, contentInfo, [0] certificates, [1] crls, signerInfos
  const content = expect(parts[2], 0x30, "contentInfo");
  const [ctype, cexplicit] = children(der, content, what);
  if (oid(der, expect(ctype, 0x06, "content type")) !== OID_SPC_INDIRECT_DATA) throw new Error(`${what} does not hold an Authenticode SpcIndirectDataContent`);
  const spc = expect(children(der, expect(cexplicit, 0xa0, "SpcIndirectDataContent"), what)[0], 0x30, "SpcIndirectDataContent");
  const digestInfo = expect(children(der, spc, what)[1], 0x30, "DigestInfo");
  const [alg, digest] = children(der, digestInfo, what);
  const algOid = oid(der, expect(children(der, expect(alg, 0x30, "AlgorithmIdentifier"), what)[0], 0x06, "digest algorithm"));
  const digestAlgorithm = DIGESTS[algOid] ?? `OID ${algOid}`;
  const digestHex = der.subarray(expect(digest, 0x04, "digest").content, digest.end).toString("hex");

  const certNodes = parts.find((p) => p.tag === 0xa0);
  const certs = certNodes ? children(der, certNodes, what).filter((c) => c.tag === 0x30) : [];
  const x509 = certs.map((c) => ({ node: c, cert: new X509Certificate(der.subarray(c.start, c.end)) }));
  // The SignerInfo names its certificate by issuer and serial number: match them as DER bytes.
  let signer: AuthenticodeSignature["signer"];
  const signerInfos = parts.at(-1)!;
  const si = signerInfos.tag === 0x31 ? children(der, signerInfos, what)[0] : undefined;
  if (si) {
    const ias = children(der, si, what)[1];
    if (ias?.tag === 0x30) {
      const [issuer, serial] = children(der, ias, what);
      const want = Buffer.concat([der.subarray(issuer.start, issuer.end), der.subarray(serial.start, serial.end)]);
      for (const { node, cert } of x509) {
        const tbs = children(der, children(der, node, what)[0], what);
        const fields = tbs[0].tag === 0xa0 ? tbs.slice(1) : tbs; // [0] version is optional
        const have = Buffer.concat([der.subarray(fields[2].start, fields[2].end), der.subarray(fields[0].start, fields[0].end)]);
        if (have.equals(want)) {
          signer = { subject: oneLine(cert.subject), issuer: oneLine(cert.issuer), serialNumber: cert.serialNumber, fingerprint256: cert.fingerprint256 };
          break;
        }
      }
    }
  }
  return { digestAlgorithm, digest: digestHex, signer, certificates: x509.map((x) => oneLine(x.cert.subject)) };
}

function oneLine(name: string): string {
  return name.split("\n").filter(Boolean).join(", ");
}
