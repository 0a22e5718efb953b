package main

import (
	"bufio"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// setup makes a monitor folder with scripts, and beside it a script that must never run: it
// leaves a marker file when it does.
func setup(t *testing.T) (m *monitor, marker string) {
	t.Helper()
	base := t.TempDir()
	dir := filepath.Join(base, "etc", "monitor.d")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	marker = filepath.Join(base, "ran")
	write := func(p, body string, mode os.FileMode) {
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	// Outside the folder: at base/etc/outside and base/outside, and a copy of sh's job.
	write(filepath.Join(base, "outside"), "touch "+marker+"; echo outside", 0o755)
	write(filepath.Join(base, "etc", "outside"), "touch "+marker+"; echo outside", 0o755)
	write(filepath.Join(dir, "hello"), "echo hello; echo to-stderr >&2", 0o755)
	write(filepath.Join(dir, "fails"), "echo partial; exit 3", 0o755)
	write(filepath.Join(dir, "slow"), "sleep 30 & echo $! > "+filepath.Join(base, "slow.pid")+"; wait", 0o755)
	write(filepath.Join(dir, "notexec"), "touch "+marker, 0o644)
	write(filepath.Join(dir, ".hidden"), "touch "+marker, 0o755)
	for name, target := range map[string]string{"sh": "/bin/sh", "escape": "../../outside", "sibling": "../outside"} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "folder"), 0o755); err != nil {
		t.Fatal(err)
	}
	return newMonitor(dir, 500*time.Millisecond, 4, log.New(io.Discard, "", 0)), marker
}

// raw sends the request line as written, byte for byte (no client cleans or encodes it).
func raw(t *testing.T, srv *httptest.Server, method, target string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: nas\r\nConnection: close\r\n\r\n", method, target)
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(body)
}

func TestList(t *testing.T) {
	m, _ := setup(t)
	srv := httptest.NewServer(m)
	defer srv.Close()
	code, body := raw(t, srv, "GET", "/")
	if code != 200 || body != "fails\nhello\nslow\n" {
		t.Fatalf("GET / = %d %q, want the executable regular files only", code, body)
	}
}

func TestRun(t *testing.T) {
	m, _ := setup(t)
	srv := httptest.NewServer(m)
	defer srv.Close()
	if code, body := raw(t, srv, "GET", "/hello"); code != 200 || body != "hello\nto-stderr\n" {
		t.Fatalf("GET /hello = %d %q", code, body)
	}
	// An encoded letter is still the same plain name.
	if code, body := raw(t, srv, "GET", "/hell%6f"); code != 200 || !strings.HasPrefix(body, "hello\n") {
		t.Fatalf("GET /hell%%6f = %d %q", code, body)
	}
	if code, body := raw(t, srv, "GET", "/fails"); code != 500 || !strings.Contains(body, "partial") || !strings.Contains(body, "exit status 3") {
		t.Fatalf("GET /fails = %d %q", code, body)
	}
	if code, _ := raw(t, srv, "POST", "/hello"); code != 405 {
		t.Fatalf("POST /hello = %d, want 405", code)
	}
}

// Nothing outside the folder runs, whatever the path: each is 404 and the marker never appears.
func TestNothingOutsideRuns(t *testing.T) {
	m, marker := setup(t)
	srv := httptest.NewServer(m)
	defer srv.Close()
	for _, target := range []string{
		"/../../bin/sh", "/../outside", "/../../outside",
		"/%2e%2e/%2e%2e/bin/sh", "/%2e%2e/outside", "/%2E%2E/outside", "/%2e%2e%2foutside", "/..%2foutside", "/..%2Foutside",
		"/.%2e/outside", "/%2e./outside", "/..", "/%2e%2e", "/.", "//outside", "/./hello", "/hello/", "/hello/..", "/%2fbin%2fsh",
		"/bin/sh", "/sh", "/escape", "/sibling", "/notexec", "/.hidden", "/folder", "/folder/", "/nope",
		"/hello%00", "/hello%0a", "/hello\\..\\outside", "/..\\outside", "/%5c..%5coutside",
		"http://nas/../outside", "http://nas/%2e%2e/outside", "*",
	} {
		code, body := raw(t, srv, "GET", target)
		if code != 404 && code != 400 {
			t.Errorf("GET %s = %d %q, want 404", target, code, body)
		}
		if strings.Contains(body, "outside") && code == 200 {
			t.Errorf("GET %s ran something outside: %q", target, body)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatalf("a script outside the folder (or a non-executable or hidden one) ran: %s exists", marker)
	}
	// The two the issue names are plain 404s.
	for _, target := range []string{"/../../bin/sh", "/%2e%2e/%2e%2e/bin/sh"} {
		if code, _ := raw(t, srv, "GET", target); code != 404 {
			t.Errorf("GET %s = %d, want 404", target, code)
		}
	}
}

// The timeout stops the script and whatever it started.
func TestTimeout(t *testing.T) {
	m, _ := setup(t)
	srv := httptest.NewServer(m)
	defer srv.Close()
	start := time.Now()
	code, body := raw(t, srv, "GET", "/slow")
	if code != 504 || !strings.Contains(body, "stopped after 500ms") {
		t.Fatalf("GET /slow = %d %q, want 504", code, body)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("GET /slow took %s", took)
	}
	pidText, err := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(m.dir)), "slow.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(pidText)))
	for i := 0; i < 50; i++ {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the script's child %d still runs after the timeout", pid)
}

func TestBusy(t *testing.T) {
	m, _ := setup(t)
	m.slots = make(chan struct{}, 1)
	m.slots <- struct{}{}
	srv := httptest.NewServer(m)
	defer srv.Close()
	if code, _ := raw(t, srv, "GET", "/hello"); code != 503 {
		t.Fatalf("GET /hello with no slot = %d, want 503", code)
	}
}

func TestCapped(t *testing.T) {
	c := &capped{max: 4}
	c.Write([]byte("abc"))
	c.Write([]byte("defg"))
	if got := string(c.Bytes()); got != "abcd\n[3 more bytes cut]\n" {
		t.Fatalf("capped = %q", got)
	}
}
