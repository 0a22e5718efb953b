// A ramroot resource class from one declaration: what the program passes (Args, whose unwrapped
// form is what the handlers get) and what the resource outputs (the handlers' output type, its
// keys listed once, checked complete by the compiler). The constructor, the typed output
// properties and the placeholders the engine needs for outputs all come from those two, so
// they cannot drift apart (an output set by the handlers but never declared, say).
import * as pulumi from "@pulumi/pulumi";
import { dynamicProvider } from "./adapter";

/** The resource's outputs as the program sees them; every resource also has its hash. */
export type ResourceOutputs<O> = { readonly [K in keyof O]-?: pulumi.Output<O[K]> } & { readonly hash: pulumi.Output<string> };

export interface ResourceClass<A, O> {
  new (name: string, args: A, opts?: pulumi.CustomResourceOptions): pulumi.dynamic.Resource & ResourceOutputs<O>;
}

/**
 * `outputs` names every key of O (`{ path: true, ... }`: the compiler refuses one missing);
 * `secretInputs` are inputs the state keeps encrypted (keys, secret values).
 */
export function resourceClass<A extends object, O extends object>(
  kind: string,
  type: string,
  outputs: { [K in keyof O]-?: true },
  opts: { secretInputs?: Array<keyof A & string> } = {},
): ResourceClass<A, O> {
  const placeholders = Object.fromEntries(["hash", ...Object.keys(outputs)].map((k) => [k, undefined]));
  class Resource extends pulumi.dynamic.Resource {
    constructor(name: string, args: A, o?: pulumi.CustomResourceOptions) {
      const options = opts.secretInputs ? { ...o, additionalSecretOutputs: [...(o?.additionalSecretOutputs ?? []), ...opts.secretInputs] } : o;
      super(dynamicProvider(kind), name, { ...args, ...placeholders }, options, "ramroot", type);
    }
  }
  return Resource as unknown as ResourceClass<A, O>;
}
