package main

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/protobuf/types/known/structpb"
)

func TestParseArgs(t *testing.T) {
	// What the engine passes (sdk/go/common/resource/plugin: buildPluginArguments, then the
	// address last), with logging flowed and tracing on.
	got, err := parseArgs([]string{"--logtostderr", "-v=9", "--tracing", "http://127.0.0.1:1/trace", "127.0.0.1:40123"})
	if err != nil || got != "127.0.0.1:40123" {
		t.Fatalf("parseArgs = %q, %v; want the address", got, err)
	}
	if got, err := parseArgs([]string{"127.0.0.1:40123"}); err != nil || got != "127.0.0.1:40123" {
		t.Fatalf("parseArgs(address) = %q, %v", got, err)
	}
	for _, bad := range [][]string{
		{},                                // no address
		{"--logtostderr"},                 // flags only
		{"--no-such-flag", "127.0.0.1:1"}, // a flag this host does not know
		{"127.0.0.1:1", "extra"},          // more than the address
		{"--tracing"},                     // a flag without its value
	} {
		if got, err := parseArgs(bad); err == nil {
			t.Errorf("parseArgs(%q) = %q, want an error", bad, got)
		}
	}
}

// sdkProject makes a project folder whose node_modules has @pulumi/pulumi's cmd/run.
func sdkProject(t *testing.T) (dir, runPath string) {
	t.Helper()
	dir = t.TempDir()
	runPath = filepath.Join(dir, "node_modules", "@pulumi", "pulumi", "cmd", "run")
	if err := os.MkdirAll(runPath, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, runPath
}

// added is what programCommand put into the environment beyond environ.
func added(t *testing.T, environ, env []string) []string {
	t.Helper()
	if len(env) < len(environ) || !reflect.DeepEqual(env[:len(environ)], environ) {
		t.Fatalf("env does not start with the host's environment: %q", env)
	}
	return env[len(environ):]
}

func TestProgramCommand(t *testing.T) {
	dir, runPath := sdkProject(t)
	// The program in dist/ resolves node_modules upwards, from the root directory.
	pwd := filepath.Join(dir, "dist")
	opts, err := structpb.NewStruct(map[string]any{"typescript": false, "tsconfig": "tsconfig.build.json", "nodeargs": "--max-old-space-size=512  --trace-warnings"})
	if err != nil {
		t.Fatal(err)
	}
	req := &pulumirpc.RunRequest{
		MonitorAddress:   "127.0.0.1:1",
		Organization:     "org",
		Project:          "ramroot",
		Stack:            "qemu",
		Pwd:              pwd,
		DryRun:           true,
		Parallel:         4,
		Args:             []string{"a", "b"},
		Config:           map[string]string{"ramroot:config:arch": "aarch64", "ramroot:base": "testsys"},
		ConfigSecretKeys: []string{"ramroot:secret"},
		Info:             &pulumirpc.ProgramInfo{RootDirectory: dir, ProgramDirectory: pwd, EntryPoint: "index.js", Options: opts},
	}
	environ := []string{"PATH=/usr/bin", "HOME=/root"}
	args, env, err := programCommand(req, "127.0.0.1:2", environ)
	if err != nil {
		t.Fatal(err)
	}
	wantArgs := []string{
		"--max-old-space-size=512", "--trace-warnings", runPath,
		"--monitor", "127.0.0.1:1", "--engine", "127.0.0.1:2", "--organization", "org",
		"--project", "ramroot", "--stack", "qemu", "--pwd", pwd, "--root-directory", dir,
		"--dry-run", "--parallel", "4", filepath.Join(pwd, "index.js"), "a", "b",
	}
	if !reflect.DeepEqual(args, wantArgs) {
		t.Errorf("args\n got %q\nwant %q", args, wantArgs)
	}
	wantEnv := []string{
		`PULUMI_CONFIG={"ramroot:arch":"aarch64","ramroot:base":"testsys"}`,
		`PULUMI_CONFIG_SECRET_KEYS=["ramroot:secret"]`,
		"PULUMI_NODEJS_TSCONFIG_PATH=tsconfig.build.json",
		"PULUMI_NODEJS_TYPESCRIPT=false",
	}
	if got := added(t, environ, env); !reflect.DeepEqual(got, wantEnv) {
		t.Errorf("env added\n got %q\nwant %q", got, wantEnv)
	}
}

func TestProgramCommandDefaults(t *testing.T) {
	dir, runPath := sdkProject(t)
	// No flags of an empty request, "." as the entry point, an empty list of secrets (not null:
	// the SDK parses it), TypeScript on.
	args, env, err := programCommand(&pulumirpc.RunRequest{Pwd: dir}, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{runPath, "--pwd", dir, "."}; !reflect.DeepEqual(args, want) {
		t.Errorf("args = %q, want %q", args, want)
	}
	if want := []string{"PULUMI_CONFIG={}", "PULUMI_CONFIG_SECRET_KEYS=[]", "PULUMI_NODEJS_TYPESCRIPT=true"}; !reflect.DeepEqual(env, want) {
		t.Errorf("env = %q, want %q", env, want)
	}
	// The program named by the request when ProgramInfo has no entry point.
	args, _, err = programCommand(&pulumirpc.RunRequest{Pwd: dir, Program: "main.js", Info: &pulumirpc.ProgramInfo{EntryPoint: "."}}, "", nil)
	if err != nil || args[len(args)-1] != "main.js" {
		t.Errorf("entry point = %q, %v; want main.js", args, err)
	}
}

func TestProgramCommandRunPath(t *testing.T) {
	dir := t.TempDir()
	_, _, err := programCommand(&pulumirpc.RunRequest{Pwd: dir}, "", nil)
	if err == nil || !strings.Contains(err.Error(), "not installed for "+dir) {
		t.Fatalf("without node_modules: %v, want the SDK named as missing", err)
	}
	// PULUMI_LANGUAGE_NODEJS_RUN_PATH, as the program's environment has it (the last value wins).
	_, other := sdkProject(t)
	args, _, err := programCommand(&pulumirpc.RunRequest{Pwd: dir}, "", []string{"PULUMI_LANGUAGE_NODEJS_RUN_PATH=/nonexistent", "PULUMI_LANGUAGE_NODEJS_RUN_PATH=" + other})
	if err != nil || args[0] != other {
		t.Fatalf("run path override: %q, %v; want %s first", args, err, other)
	}
}

// Run with a stand-in for node: it records its arguments, and its exit code is what Run reports.
func TestRun(t *testing.T) {
	dir, runPath := sdkProject(t)
	record := filepath.Join(t.TempDir(), "argv")
	node := filepath.Join(t.TempDir(), "node")
	script := "#!/bin/sh\nprintf '%s\\n' \"$PWD\" \"$@\" > " + record + "\necho \"$PULUMI_CONFIG\" >> " + record + "\nexit \"${EXIT:-0}\"\n"
	if err := os.WriteFile(node, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	h := &host{nodeBin: node, engine: "127.0.0.1:9"}
	req := &pulumirpc.RunRequest{Pwd: dir, Stack: "qemu", Config: map[string]string{"p:k": "v"}}
	for _, c := range []struct {
		exit string
		want *pulumirpc.RunResponse
	}{
		{"0", &pulumirpc.RunResponse{}},
		{"32", &pulumirpc.RunResponse{Bail: true}},
		{"3", &pulumirpc.RunResponse{Error: "Program exited with non-zero exit code: 3"}},
	} {
		t.Setenv("EXIT", c.exit)
		got, err := h.Run(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if got.GetError() != c.want.GetError() || got.GetBail() != c.want.GetBail() {
			t.Errorf("exit %s: Run = %v, want %v", c.exit, got, c.want)
		}
		b, err := os.ReadFile(record)
		if err != nil {
			t.Fatal(err)
		}
		want := strings.Join([]string{dir, runPath, "--engine", "127.0.0.1:9", "--stack", "qemu", "--pwd", dir, ".", `{"p:k":"v"}`}, "\n") + "\n"
		if string(b) != want {
			t.Errorf("exit %s: node ran as\n%s\nwant\n%s", c.exit, b, want)
		}
	}
	h.nodeBin = filepath.Join(dir, "no-node")
	if got, err := h.Run(context.Background(), req); err != nil || !strings.HasPrefix(got.GetError(), "could not run node: ") {
		t.Errorf("without node: %v, %v", got, err)
	}
}

func TestPackages(t *testing.T) {
	dir, _ := sdkProject(t)
	nm := filepath.Join(dir, "node_modules")
	write := func(rel, text string) {
		t.Helper()
		p := filepath.Join(nm, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("@pulumi/pulumi/package.json", `{"name":"@pulumi/pulumi","version":"3.270.0"}`)
	write("@pulumi/command/package.json", `{"name":"@pulumi/command","version":"1.2.1","pulumi":{"resource":true}}`)
	write("fflate/package.json", `{"name":"fflate","version":"0.8.2"}`)
	write(".package-lock.json", `{}`) // a file: no package
	write(".bin/tsc", "")             // a folder without package.json: no package
	h := &host{}
	plugins, err := h.GetRequiredPlugins(context.Background(), &pulumirpc.GetRequiredPluginsRequest{Info: &pulumirpc.ProgramInfo{ProgramDirectory: dir}})
	if err != nil {
		t.Fatal(err)
	}
	if p := plugins.GetPlugins(); len(p) != 1 || p[0].GetName() != "command" || p[0].GetVersion() != "v1.2.1" {
		t.Errorf("plugins = %v, want command v1.2.1", p)
	}
	deps, err := h.GetProgramDependencies(context.Background(), &pulumirpc.GetProgramDependenciesRequest{Info: &pulumirpc.ProgramInfo{ProgramDirectory: dir}})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range deps.GetDependencies() {
		names = append(names, d.GetName()+"@"+d.GetVersion())
	}
	if want := []string{"@pulumi/command@1.2.1", "@pulumi/pulumi@3.270.0", "fflate@0.8.2"}; !reflect.DeepEqual(names, want) {
		t.Errorf("dependencies = %q, want %q", names, want)
	}
	// A package.json that is not JSON is reported with its path, not skipped.
	write("broken/package.json", "{")
	if _, err := h.GetRequiredPlugins(context.Background(), &pulumirpc.GetRequiredPluginsRequest{Info: &pulumirpc.ProgramInfo{ProgramDirectory: dir}}); err == nil || !strings.Contains(err.Error(), filepath.Join(nm, "broken", "package.json")) {
		t.Errorf("broken package.json: %v", err)
	}
}
