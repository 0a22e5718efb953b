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
	"fmt"
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
	args := os.Args[1:]
	var engineAddress string
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			engineAddress = a
		}
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
	fmt.Printf("%d\n", handle.Port)
	if err := <-handle.Done; err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-language-nodejs: %v\n", err)
		os.Exit(1)
	}
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
		if pgid, err := syscall.Getpgid(0); err == nil && pgid == os.Getpid() {
			_ = syscall.Kill(-pgid, syscall.SIGTERM)
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
	var plugins []*pulumirpc.PluginDependency
	for _, pj := range packageJSONs(findNodeModules(dir)) {
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
		b, err := os.ReadFile(pj)
		if err != nil || json.Unmarshal(b, &p) != nil || !p.Pulumi.Resource {
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

func packageJSONs(nodeModules string) []string {
	if nodeModules == "" {
		return nil
	}
	var out []string
	entries, _ := os.ReadDir(nodeModules)
	for _, e := range entries {
		p := filepath.Join(nodeModules, e.Name())
		if strings.HasPrefix(e.Name(), "@") {
			scoped, _ := os.ReadDir(p)
			for _, s := range scoped {
				out = append(out, filepath.Join(p, s.Name(), "package.json"))
			}
			continue
		}
		out = append(out, filepath.Join(p, "package.json"))
	}
	sort.Strings(out)
	return out
}

func (h *host) GetProgramDependencies(_ context.Context, req *pulumirpc.GetProgramDependenciesRequest) (*pulumirpc.GetProgramDependenciesResponse, error) {
	dir := programDir(req.GetInfo(), req.GetProgram())
	var deps []*pulumirpc.DependencyInfo
	for _, pj := range packageJSONs(findNodeModules(dir)) {
		var p struct{ Name, Version string }
		if b, err := os.ReadFile(pj); err == nil && json.Unmarshal(b, &p) == nil && p.Name != "" {
			deps = append(deps, &pulumirpc.DependencyInfo{Name: p.Name, Version: p.Version})
		}
	}
	return &pulumirpc.GetProgramDependenciesResponse{Dependencies: deps}, nil
}

func (h *host) About(context.Context, *pulumirpc.AboutRequest) (*pulumirpc.AboutResponse, error) {
	out, _ := exec.Command(h.nodeBin, "--version").Output()
	return &pulumirpc.AboutResponse{Executable: h.nodeBin, Version: strings.TrimSpace(string(out))}, nil
}

func (h *host) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	dir := programDir(req.GetInfo(), req.GetPwd())
	runPath := os.Getenv("PULUMI_LANGUAGE_NODEJS_RUN_PATH")
	if runPath == "" {
		if nm := findNodeModules(dir); nm != "" {
			runPath = filepath.Join(nm, "@pulumi", "pulumi", "cmd", "run")
		}
	}
	if _, err := os.Stat(runPath); runPath == "" || err != nil {
		return &pulumirpc.RunResponse{Error: "the Pulumi SDK (@pulumi/pulumi) is not installed for " + dir + ": run npm install"}, nil
	}
	args := []string{runPath}
	flag := func(k, v string) {
		if v != "" {
			args = append(args, "--"+k, v)
		}
	}
	flag("monitor", req.GetMonitorAddress())
	flag("engine", h.engine)
	flag("organization", req.GetOrganization())
	flag("project", req.GetProject())
	flag("stack", req.GetStack())
	flag("pwd", req.GetPwd())
	if req.GetInfo() != nil {
		flag("root-directory", req.GetInfo().GetRootDirectory())
	}
	if req.GetDryRun() {
		args = append(args, "--dry-run")
	}
	if req.GetParallel() > 0 {
		flag("parallel", fmt.Sprint(req.GetParallel()))
	}
	entry := "."
	if req.GetInfo() != nil && req.GetInfo().GetEntryPoint() != "" && req.GetInfo().GetEntryPoint() != "." {
		entry = filepath.Join(dir, req.GetInfo().GetEntryPoint())
	} else if req.GetProgram() != "" {
		entry = req.GetProgram()
	}
	args = append(args, entry)
	args = append(args, req.GetArgs()...)

	cfg := map[string]string{}
	for k, v := range req.GetConfig() {
		if key, err := config.ParseKey(k); err == nil {
			cfg[key.Namespace()+":"+key.Name()] = v
		} else {
			cfg[k] = v
		}
	}
	cfgJSON, _ := json.Marshal(cfg)
	secrets := req.GetConfigSecretKeys()
	if secrets == nil {
		secrets = []string{}
	}
	secretsJSON, _ := json.Marshal(secrets)

	env := append(os.Environ(), "PULUMI_CONFIG="+string(cfgJSON), "PULUMI_CONFIG_SECRET_KEYS="+string(secretsJSON))
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
