// SignedUki: the UKI signed for Secure Boot (Authenticode, SHA-256, src/image/sign.ts), as a step of
// its own after the Uki. It is named by the UKI's hash and the certificate's fingerprint, both
// known in preview, so `pulumi preview` names the signed image before it is made; a new key
// (with its certificate) re-signs the same UKI, and only this step and what boots or deploys
// its bytes change.
//
// The private key is a secret input: the engine keeps it encrypted in the state (as an input,
// and as an output through additionalSecretOutputs), it is never part of the hash or of a store
// name, and src/image/sign.ts hands it to sbsign on a pipe, never in a file, an argument or a log line.
import * as pulumi from "@pulumi/pulumi";
import * as path from "node:path";
import { resourceClass } from "./resource";
import { artifactHandlers, isKnown } from "./artifact";
import { sha256 } from "../src/store";
import { checkSigningKey, readCertificate, signUki, verifyUki } from "../src/image/sign";

export interface SignedUkiArgs {
  /** The unsigned UKI (Uki.path). */
  uki: pulumi.Input<string>;
  /** The Uki's hash (known in preview): with the certificate, it names the signed image. */
  ukiHash: pulumi.Input<string>;
  /** The sha256 of the unsigned UKI's bytes (Uki.sha256), checked against the store's record. */
  ukiSha256: pulumi.Input<string>;
  /** The certificate, PEM (ramroot:secureBootCert): what the firmware's db must hold. */
  cert: pulumi.Input<string>;
  /** The private key, PEM (ramroot:secureBootKey): pass a Pulumi secret. */
  key: pulumi.Input<string>;
  /** The key's passphrase, when it is encrypted (ramroot:secureBootKeyPassphrase): a secret. */
  passphrase?: pulumi.Input<string>;
  /** The UKI holds a secrets layer: the signed copy is then readable only by its owner. */
  containsSecrets?: pulumi.Input<boolean>;
}

type Inputs = pulumi.Unwrap<SignedUkiArgs>;

const certProblem = (cert: string) => {
  try {
    readCertificate(cert, "ramroot:secureBootCert");
    return undefined;
  } catch (e: any) {
    return e.message as string;
  }
};

interface Outputs { path: string; sha256: string; size: number; digest: string; signer: string; certFingerprint: string }

/** This layer's format, its one version knob: every hash of it starts with it (see artifact.ts). */
const FORMAT = "signeduki/1";

export const handlers = artifactHandlers<Inputs, Outputs>({
  kind: "signeduki",
  format: FORMAT,
  hashKeys: ["ukiHash", "cert"],
  async validate(i, fail) {
    if (isKnown(i.cert)) {
      const bad = certProblem(i.cert);
      if (bad) return fail("cert", `${bad} (pulumi config set ramroot:secureBootCert -- "$(cat db.pem)")`);
    }
    // The key is checked in preview too: a wrong passphrase or another certificate's key stops
    // the preview, not the build. The messages never hold the key (src/image/sign.ts).
    if (isKnown(i.key) && isKnown(i.cert) && isKnown(i.passphrase)) {
      try {
        checkSigningKey({ key: i.key, cert: i.cert, passphrase: i.passphrase });
      } catch (e: any) {
        fail("key", `ramroot:secureBootKey: ${e.message}`);
      }
    }
  },
  async hash(i) {
    return sha256(JSON.stringify([FORMAT, i.ukiHash, readCertificate(i.cert).fingerprint256]));
  },
  async build(i, ctx) {
    // A UKI by another name in the uki/ folder, which the store's verify and gc know; the name
    // is this resource's hash, which the state holds (what gc keeps).
    const rel = `uki/${i.hash}.efi`;
    const rec = await ctx.store.record(ctx.store.relOf(i.uki) ?? "-");
    if (rec && (rec.type !== "file" || rec.sha256 !== i.ukiSha256))
      throw new Error(`signeduki: ${i.uki} is not the UKI with sha256 ${i.ukiSha256}: run \`pulumi up\` again`);
    let signed: { digest: string; signer: string } | undefined;
    const res = await ctx.store.put(rel, async (tmp) => {
      const s = await signUki(i.uki, tmp, { key: i.key, passphrase: i.passphrase, cert: i.cert });
      signed = s;
      return { sha256: s.sha256, size: s.size };
    }, { mode: i.containsSecrets ? 0o600 : 0o644 });
    // Reused or just made: it must verify against the certificate before anything boots it.
    const v = await verifyUki(res.path, i.cert);
    if (!v.ok) throw new Error(`signeduki: ${res.path} does not verify against ramroot:secureBootCert: ${v.why}; remove it and run \`pulumi up\` again`);
    const out = await ctx.store.record(rel);
    if (out?.type !== "file") throw new Error(`signeduki: ${res.path} has no record of its bytes`);
    const signer = signed?.signer ?? v.signatures[0]?.signer?.subject ?? "";
    ctx.log(`${res.built ? "signed" : "reused"} ${path.basename(res.path)} (UKI ${path.basename(i.uki)}): Authenticode SHA-256 ${v.digest.slice(0, 16)}, by ${signer.split("\n").filter(Boolean).join(", ")}, sha256 ${out.sha256.slice(0, 16)}`);
    return { path: res.path, sha256: out.sha256, size: out.size, digest: v.digest, signer: signer.split("\n").filter(Boolean).join(", "), certFingerprint: readCertificate(i.cert).fingerprint256 };
  },
  artifacts: (p) => [p.path],
});

export const SignedUki = resourceClass<SignedUkiArgs, Outputs>("signed-uki", "SignedUki", { path: true, sha256: true, size: true, digest: true, signer: true, certFingerprint: true }, { secretInputs: ["key", "passphrase"] });
export type SignedUki = InstanceType<typeof SignedUki>;
