// pulumi-language-nodejs: a minimal Node.js language host for the Pulumi engine.
//
// Why this exists: the upstream language host is a Go module without version tags, and the
// module proxy reachable on ramroot's build machines does not serve it, while the CLI itself
// (github.com/pulumi/pulumi/pkg/v3) is served. The engine only needs a few calls from a
// language host to run a Node.js program; everything else falls back when it answers
// Unimplemented (Handshake, GetRequiredPackages, RuntimeOptionsPrompts, ...). So this host
// implements exactly: GetPluginInfo, GetRequiredPlugins, Run, and the About/dependency
// queries, by spawning @pulumi/pulumi's own `cmd/run` entry point the way upstream does.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/config"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	"github.com/pulumi/pulumi/sdk/v3/go/common/version"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

func main() {
	engineAddress, err := parseArgs(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-language-nodejs: %v\n", err)
		os.Exit(2)
	}
	nodeBin, err := exec.LookPath("node")
	if err != nil {
		fmt.Fprintln(os.Stderr, "pulumi-language-nodejs: could not find node on PATH")
		os.Exit(1)
	}
	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Init: func(srv *grpc.Server) error {
			pulumirpc.RegisterLanguageRuntimeServer(srv, &host{nodeBin: nodeBin, engine: engineAddress})
			return nil
		},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-language-nodejs: %v\n", err)
		os.Exit(1)
	}
	go endWithEngine()
	// The engine reads the port from our first line of output: a host that cannot say it is useless.
	if _, err := fmt.Printf("%d\n", handle.Port); err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-language-nodejs: %v\n", err)
		os.Exit(1)
	}
	if err := <-handle.Done; err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-language-nodejs: %v\n", err)
		os.Exit(1)
	}
}

// parseArgs takes what the engine passes a language plugin: the logging and tracing flags it
// gives every plugin (--logtostderr, -v=N, --tracing URL; this host keeps no log of its own and
// traces nothing, so they are accepted and not used), then the engine's address, last.
func parseArgs(args []string) (string, error) {
	set := flag.NewFlagSet("pulumi-language-nodejs", flag.ContinueOnError)
	set.SetOutput(io.Discard)
	set.Bool("logtostderr", false, "log to stderr (accepted, unused)")
	set.Int("v", 0, "log verbosity (accepted, unused)")
	set.String("tracing", "", "tracing endpoint (accepted, unused)")
	if err := set.Parse(args); err != nil {
		return "", err
	}
	if set.NArg() != 1 {
		return "", fmt.Errorf("want one argument, the engine's address, after the flags; got %q", set.Args())
	}
	return set.Arg(0), nil
}

// endWithEngine: an engine killed with SIGKILL cannot stop its plugins, so this host (and the
// program it runs) would live on as orphans holding the store. When the parent is gone, end our
// process group (the engine starts each plugin in its own) and exit.
func endWithEngine() {
	parent := os.Getppid()
	for range time.Tick(time.Second) {
		if os.Getppid() == parent {
			continue
		}
		if pgid, err := syscall.Getpgid(0); err != nil {
			fmt.Fprintf(os.Stderr, "pulumi-language-nodejs: the engine is gone, and our process group is unknown: %v\n", err)
		} else if pgid == os.Getpid() {
			if err := syscall.Kill(-pgid, syscall.SIGTERM); err != nil {
				fmt.Fprintf(os.Stderr, "pulumi-language-nodejs: the engine is gone, and our process group could not be ended: %v\n", err)
			}
		}
		os.Exit(1)
	}
}

type host struct {
	pulumirpc.UnimplementedLanguageRuntimeServer
	nodeBin string
	engine  string
}

func (h *host) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version.Version}, nil
}

// programDir is where node_modules and package.json live.
func programDir(info *pulumirpc.ProgramInfo, fallback string) string {
	if info != nil && info.GetProgramDirectory() != "" {
		return info.GetProgramDirectory()
	}
	return fallback
}

// GetRequiredPlugins lists resource plugins of packages marked {"pulumi": {"resource": true}}
// among the program's direct node_modules (scoped ones included), as upstream does.
func (h *host) GetRequiredPlugins(_ context.Context, req *pulumirpc.GetRequiredPluginsRequest) (*pulumirpc.GetRequiredPluginsResponse, error) {
	dir := programDir(req.GetInfo(), req.GetProgram())
	pjs, err := packageJSONs(findNodeModules(dir))
	if err != nil {
		return nil, err
	}
	var plugins []*pulumirpc.PluginDependency
	for _, pj := range pjs {
		var p struct {
			Name    string `json:"name"`
			Version string `json:"version"`
			Pulumi  struct {
				Resource bool   `json:"resource"`
				Name     string `json:"name"`
				Version  string `json:"version"`
				Server   string `json:"server"`
			} `json:"pulumi"`
		}
		if ok, err := readPackageJSON(pj, &p); err != nil {
			return nil, err
		} else if !ok || !p.Pulumi.Resource {
			continue
		}
		name := p.Pulumi.Name
		if name == "" {
			name = strings.TrimPrefix(strings.TrimPrefix(p.Name, "@pulumi/"), "@")
		}
		v := p.Pulumi.Version
		if v == "" {
			v = p.Version
		}
		if !strings.HasPrefix(v, "v") {
			v = "v" + v
		}
		plugins = append(plugins, &pulumirpc.PluginDependency{Name: name, Kind: "resource", Version: v, Server: p.Pulumi.Server})
	}
	return &pulumirpc.GetRequiredPluginsResponse{Plugins: plugins}, nil
}

// readPackageJSON reads one package's package.json into v. A folder of node_modules without one
// (.bin, a half-removed package) is no package: false, and no error.
func readPackageJSON(path string, v any) (bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	return true, nil
}

// findNodeModules looks for node_modules/@pulumi/pulumi from dir upwards, as Node's own module
// resolution does (a program in dist/ uses the project's node_modules).
func findNodeModules(dir string) string {
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "node_modules", "@pulumi", "pulumi")); err == nil {
			return filepath.Join(d, "node_modules")
		}
		if filepath.Dir(d) == d {
			return ""
		}
	}
}

// packageJSONs names the package.json of each folder in node_modules and in its @scope folders.
// Files there (npm's .package-lock.json) are no packages.
func packageJSONs(nodeModules string) ([]string, error) {
	if nodeModules == "" {
		return nil, nil
	}
	entries, err := os.ReadDir(nodeModules)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		p := filepath.Join(nodeModules, e.Name())
		if !isDir(p, e) {
			continue
		}
		if strings.HasPrefix(e.Name(), "@") {
			scoped, err := os.ReadDir(p)
			if err != nil {
				return nil, err
			}
			for _, s := range scoped {
				if sp := filepath.Join(p, s.Name()); isDir(sp, s) {
					out = append(out, filepath.Join(sp, "package.json"))
				}
			}
			continue
		}
		out = append(out, filepath.Join(p, "package.json"))
	}
	sort.Strings(out)
	return out, nil
}

// isDir: a folder, or a link to one (npm link, workspaces).
func isDir(path string, e os.DirEntry) bool {
	if e.IsDir() {
		return true
	}
	if e.Type()&os.ModeSymlink == 0 {
		return false
	}
	st, err := os.Stat(path)
	return err == nil && st.IsDir()
}

func (h *host) GetProgramDependencies(_ context.Context, req *pulumirpc.GetProgramDependenciesRequest) (*pulumirpc.GetProgramDependenciesResponse, error) {
	dir := programDir(req.GetInfo(), req.GetProgram())
	pjs, err := packageJSONs(findNodeModules(dir))
	if err != nil {
		return nil, err
	}
	var deps []*pulumirpc.DependencyInfo
	for _, pj := range pjs {
		var p struct{ Name, Version string }
		if ok, err := readPackageJSON(pj, &p); err != nil {
			return nil, err
		} else if ok && p.Name != "" {
			deps = append(deps, &pulumirpc.DependencyInfo{Name: p.Name, Version: p.Version})
		}
	}
	return &pulumirpc.GetProgramDependenciesResponse{Dependencies: deps}, nil
}

func (h *host) About(context.Context, *pulumirpc.AboutRequest) (*pulumirpc.AboutResponse, error) {
	out, err := exec.Command(h.nodeBin, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w", h.nodeBin, err)
	}
	return &pulumirpc.AboutResponse{Executable: h.nodeBin, Version: strings.TrimSpace(string(out))}, nil
}

// programCommand is how Run starts the program: the arguments of node (@pulumi/pulumi's
// cmd/run, its flags, the entry point, the program's own arguments) and the environment, which
// is environ plus the stack's config and the TypeScript settings, as upstream's host passes them.
// An error is the RunResponse's error text (the program did not run).
func programCommand(req *pulumirpc.RunRequest, engine string, environ []string) (args, env []string, err error) {
	dir := programDir(req.GetInfo(), req.GetPwd())
	runPath := lookupEnv(environ, "PULUMI_LANGUAGE_NODEJS_RUN_PATH")
	if runPath == "" {
		if nm := findNodeModules(dir); nm != "" {
			runPath = filepath.Join(nm, "@pulumi", "pulumi", "cmd", "run")
		}
	}
	if _, err := os.Stat(runPath); runPath == "" || err != nil {
		return nil, nil, errors.New("the Pulumi SDK (@pulumi/pulumi) is not installed for " + dir + ": run npm install")
	}
	args = []string{runPath}
	opt := func(k, v string) {
		if v != "" {
			args = append(args, "--"+k, v)
		}
	}
	opt("monitor", req.GetMonitorAddress())
	opt("engine", engine)
	opt("organization", req.GetOrganization())
	opt("project", req.GetProject())
	opt("stack", req.GetStack())
	opt("pwd", req.GetPwd())
	if req.GetInfo() != nil {
		opt("root-directory", req.GetInfo().GetRootDirectory())
	}
	if req.GetDryRun() {
		args = append(args, "--dry-run")
	}
	if req.GetParallel() > 0 {
		opt("parallel", fmt.Sprint(req.GetParallel()))
	}
	entry := "."
	if req.GetInfo() != nil && req.GetInfo().GetEntryPoint() != "" && req.GetInfo().GetEntryPoint() != "." {
		entry = filepath.Join(dir, req.GetInfo().GetEntryPoint())
	} else if req.GetProgram() != "" {
		entry = req.GetProgram()
	}
	args = append(args, entry)
	args = append(args, req.GetArgs()...)

	// The SDK reads config keys as "project:key"; the engine may send "project:config:key".
	cfg := map[string]string{}
	for k, v := range req.GetConfig() {
		if key, err := config.ParseKey(k); err == nil {
			cfg[key.Namespace()+":"+key.Name()] = v
		} else {
			cfg[k] = v
		}
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("the stack's config as JSON: %w", err)
	}
	secrets := req.GetConfigSecretKeys()
	if secrets == nil {
		secrets = []string{}
	}
	secretsJSON, err := json.Marshal(secrets)
	if err != nil {
		return nil, nil, fmt.Errorf("the stack's secret keys as JSON: %w", err)
	}

	env = append(append([]string{}, environ...), "PULUMI_CONFIG="+string(cfgJSON), "PULUMI_CONFIG_SECRET_KEYS="+string(secretsJSON))
	ts := "true"
	if opts := req.GetInfo().GetOptions(); opts != nil {
		if v, ok := opts.AsMap()["typescript"].(bool); ok && !v {
			ts = "false"
		}
		if v, ok := opts.AsMap()["tsconfig"].(string); ok && v != "" {
			env = append(env, "PULUMI_NODEJS_TSCONFIG_PATH="+v)
		}
		if v, ok := opts.AsMap()["nodeargs"].(string); ok && v != "" {
			args = append(strings.Fields(v), args...)
		}
	}
	env = append(env, "PULUMI_NODEJS_TYPESCRIPT="+ts)
	return args, env, nil
}

// lookupEnv: the last value of name in environ, as the exec'd process would see it.
func lookupEnv(environ []string, name string) string {
	v := ""
	for _, kv := range environ {
		if k, val, ok := strings.Cut(kv, "="); ok && k == name {
			v = val
		}
	}
	return v
}

func (h *host) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	args, env, err := programCommand(req, h.engine, os.Environ())
	if err != nil {
		return &pulumirpc.RunResponse{Error: err.Error()}, nil
	}
	cmd := exec.CommandContext(ctx, h.nodeBin, args...)
	cmd.Dir = req.GetPwd()
	cmd.Stdout, cmd.Stderr, cmd.Env = os.Stdout, os.Stderr, env
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			// Exit code 32 means the program already reported its error to the engine.
			if ee.ExitCode() == 32 {
				return &pulumirpc.RunResponse{Error: "", Bail: true}, nil
			}
			return &pulumirpc.RunResponse{Error: fmt.Sprintf("Program exited with non-zero exit code: %d", ee.ExitCode())}, nil
		}
		return &pulumirpc.RunResponse{Error: "could not run node: " + err.Error()}, nil
	}
	return &pulumirpc.RunResponse{}, nil
}
