// Loading @pulumi/pulumi costs the program and the dynamic-provider plugin 0.3-0.9 s each, on
// every `pulumi up`: most of it is two modules the SDK requires when it loads but uses only to
// serialize a function's closure, which ramroot never asks of it (components/adapter.ts writes
// the provider's text itself): npm's @npmcli/arborist, with pacote, sigstore and the rest of
// npm's registry client behind it, and the TypeScript compiler. This makes those two requires,
// from inside the SDK only, return a stand-in that loads the real module on first use, so a
// program that does serialize a closure still gets it, just later.
//
// It must run before the SDK is first required: index.ts imports it first, and the plugin's
// launcher (scripts/plugins/) preloads it with `node --require`.
import Module = require("node:module");

const LAZY = new Set(["@npmcli/arborist", "typescript"]);
const FROM_SDK = /[\\/]node_modules[\\/]@pulumi[\\/]pulumi[\\/]/;

type Load = (request: string, parent: NodeModule | undefined, isMain: boolean) => unknown;
const loader = Module as unknown as { _load: Load & { ramrootLazy?: true }; _resolveFilename(request: string, parent: NodeModule | undefined): string };
const load = loader._load;

if (!load.ramrootLazy) {
  const lazyLoad: Load & { ramrootLazy?: true } = function (this: unknown, request, parent, isMain) {
    if (!LAZY.has(request) || !parent?.filename || !FROM_SDK.test(parent.filename)) return load.call(this, request, parent, isMain);
    // Not installed: the require fails now, as it would have (the SDK's TypeScript shim falls back to its vendored copy).
    loader._resolveFilename(request, parent);
    let real: any;
    const get = () => (real ??= load.call(Module, request, parent, isMain));
    // The SDK reads these modules through TypeScript's __importStar, which returns a module that
    // says __esModule as it is, and copies (so loads) any other; `default` of a CommonJS module
    // is the module itself.
    return new Proxy(function () {}, {
      get: (_, p) => (p === "__esModule" && real === undefined ? true : p === "default" && !get().__esModule ? get() : Reflect.get(get(), p)),
      has: (_, p) => Reflect.has(get(), p),
      apply: (_, self, args) => Reflect.apply(get(), self, args),
      construct: (_, args) => Reflect.construct(get(), args),
    });
  };
  lazyLoad.ramrootLazy = true;
  loader._load = lazyLoad;
}
