// srvmonitor: the NAS's status page, as on the original. It listens on port 80 and serves the
// output of the scripts in /etc/monitor.d:
//
//	GET /       the names of the scripts, one per line
//	GET /NAME   runs /etc/monitor.d/NAME (nothing else, with a timeout) and returns its output
//
// Only a plain name is looked up, and only an executable regular file directly in the folder is
// run: a path with a slash, a dot-dot (written plainly or %-encoded), a name starting with a
// dot, a symlink, a folder or a file that is not executable is 404, and nothing runs. Scripts
// run with a clean environment, in their own process group, which is killed at the timeout.
//
// Flags: -addr (:80), -dir (/etc/monitor.d), -timeout (10s), -max (4 scripts at once).
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"
)

// A script's name: letters, digits, dot, dash and underscore, not starting with a dot.
var scriptName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]*$`)

// maxOutput is what one answer carries of a script's output; the rest is cut.
const maxOutput = 1 << 20

type monitor struct {
	dir     string
	timeout time.Duration
	// One token per script that may run at once.
	slots chan struct{}
	log   *log.Logger
}

func newMonitor(dir string, timeout time.Duration, max int, logger *log.Logger) *monitor {
	if max < 1 {
		max = 1
	}
	return &monitor{dir: dir, timeout: timeout, slots: make(chan struct{}, max), log: logger}
}

// script returns the path of the script called name, or "" when there is none: name must be a
// plain name, and the entry an executable regular file (not followed if it is a symlink).
func (m *monitor) script(name string) string {
	if !scriptName.MatchString(name) {
		return ""
	}
	p := filepath.Join(m.dir, name)
	fi, err := os.Lstat(p)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return ""
	}
	return p
}

// scripts lists the names that script() accepts, sorted.
func (m *monitor) scripts() ([]string, error) {
	entries, err := os.ReadDir(m.dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if m.script(e.Name()) != "" {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

func (m *monitor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		http.Error(w, "only GET", http.StatusMethodNotAllowed)
		return
	}
	// The path as decoded, never cleaned or redirected: "/" or "/NAME" and nothing else.
	if r.URL.Path == "/" {
		names, err := m.scripts()
		if err != nil {
			m.log.Printf("listing %s: %v", m.dir, err)
			http.Error(w, "cannot list the scripts", http.StatusInternalServerError)
			return
		}
		for _, n := range names {
			fmt.Fprintln(w, n)
		}
		return
	}
	name, ok := strings.CutPrefix(r.URL.Path, "/")
	script := ""
	if ok {
		script = m.script(name)
	}
	if script == "" {
		http.NotFound(w, r)
		return
	}
	select {
	case m.slots <- struct{}{}:
		defer func() { <-m.slots }()
	default:
		http.Error(w, "busy: too many scripts running", http.StatusServiceUnavailable)
		return
	}
	status, out := m.run(r.Context(), name, script)
	w.WriteHeader(status)
	w.Write(out)
}

// run runs one script under the timeout and says what to answer.
func (m *monitor) run(ctx context.Context, name, script string) (int, []byte) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, script)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/", "LC_ALL=C"}
	// Its own process group: the timeout ends whatever the script started, too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	out := &capped{max: maxOutput}
	cmd.Stdout = out
	cmd.Stderr = out
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start).Round(time.Millisecond)
	var exit *exec.ExitError
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		m.log.Printf("%s: stopped after %s (the timeout)", name, m.timeout)
		return http.StatusGatewayTimeout, append(out.Bytes(), fmt.Sprintf("\n%s: stopped after %s (the timeout)\n", name, m.timeout)...)
	case errors.As(err, &exit):
		m.log.Printf("%s: %v in %s", name, err, took)
		return http.StatusInternalServerError, append(out.Bytes(), fmt.Sprintf("\n%s: %v\n", name, err)...)
	case err != nil:
		m.log.Printf("%s: %v", name, err)
		return http.StatusInternalServerError, []byte(fmt.Sprintf("%s: cannot run: %v\n", name, err))
	}
	m.log.Printf("%s: ok in %s", name, took)
	return http.StatusOK, out.Bytes()
}

// capped keeps the first max bytes written to it and counts the rest.
type capped struct {
	buf     bytes.Buffer
	max     int
	dropped int
}

func (c *capped) Write(p []byte) (int, error) {
	room := c.max - c.buf.Len()
	if room > len(p) {
		room = len(p)
	}
	if room > 0 {
		c.buf.Write(p[:room])
	}
	c.dropped += len(p) - max(room, 0)
	return len(p), nil
}

func (c *capped) Bytes() []byte {
	if c.dropped == 0 {
		return c.buf.Bytes()
	}
	return append(c.buf.Bytes(), fmt.Sprintf("\n[%d more bytes cut]\n", c.dropped)...)
}

func main() {
	addr := flag.String("addr", ":80", "where to listen")
	dir := flag.String("dir", "/etc/monitor.d", "the folder of scripts")
	timeout := flag.Duration("timeout", 10*time.Second, "how long one script may run")
	maxRun := flag.Int("max", 4, "how many scripts may run at once")
	flag.Parse()
	logger := log.New(os.Stderr, "srvmonitor: ", log.LstdFlags)
	srv := &http.Server{
		Addr:              *addr,
		Handler:           newMonitor(*dir, *timeout, *maxRun, logger),
		ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout:      *timeout + 10*time.Second,
		ErrorLog:          logger,
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	logger.Printf("serving %s on %s", *dir, *addr)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Fatal(err)
	}
}
