package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// TestMain lets the test binary act as localset for the child process of the tests below.
func TestMain(m *testing.M) {
	if args := os.Getenv("RP_LOCALSET_ARGS"); args != "" {
		os.Args = append([]string{"localset"}, filepath.SplitList(args)...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// `make up | tee up.log` then Ctrl-C kills tee first: localset's output then goes to a pipe
// nobody reads. A write there must fail quietly, never kill localset with SIGPIPE, which
// would leave the servers, caches and databases to stop all at once.
func TestBrokenOutputPipeDoesNotKill(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	// A missing manifest: localset reports the error on its (broken) stderr and exits 1.
	sep := string(filepath.ListSeparator)
	cmd.Env = append(os.Environ(), "RP_LOCALSET_ARGS=up"+sep+"-f"+sep+filepath.Join(t.TempDir(), "missing.yaml"))
	cmd.Stdout, cmd.Stderr = w, w
	err = cmd.Run()
	w.Close()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("localset with a missing manifest: %v, want exit status 1", err)
	}
	ws := ee.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		t.Fatalf("localset was killed by %s writing to a broken pipe", ws.Signal())
	}
	if ws.ExitStatus() != 1 {
		t.Fatalf("localset exited %d, want 1", ws.ExitStatus())
	}
}

// tinySet is a one-cell SET small enough to start in seconds: what matters below is how it
// stops, not how much it holds.
const tinySet = `apiVersion: redpacket.dev/v1alpha1
kind: RedPacketSet
metadata: {name: tiny}
spec:
  zones: [zone-a]
  cells: 1
  capacity: {peakOpensPerSecond: 100, perServerOpensPerSecond: 100}
  template:
    shards: {databases: 2, tablesPerDatabase: 2}
`

// localsetEnv is the environment that makes the test binary run `localset up` on a tiny SET
// in dir.
func localsetEnv(t *testing.T, dir string) []string {
	t.Helper()
	manifest := filepath.Join(dir, "tiny.yaml")
	if err := os.WriteFile(manifest, []byte(tinySet), 0o644); err != nil {
		t.Fatal(err)
	}
	sep := string(filepath.ListSeparator)
	args := strings.Join([]string{"up", "-f", manifest, "-data", filepath.Join(dir, "data"), "-no-install", "-max-servers-per-cell", "1"}, sep)
	return append(os.Environ(), "RP_LOCALSET_ARGS="+args)
}

// `make up | tee up.log`, then ^C at the terminal. The terminal sends SIGINT to its whole
// foreground process group: had make and tee been in it, tee would die (the log of the stop
// lost, localset's next write a SIGPIPE) and make would kill itself with SIGINT however
// cleanly localset stopped. Here a real terminal (a pty) runs the pipeline under a shell
// without job control, as make's recipe shell does; the ^C must reach localset alone, which
// stops tier by tier, tee must keep writing to the end, and the pipeline must exit 0.
func TestCtrlCAtTerminalWhilePipedStopsInOrderAndExitsZero(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a local SET")
	}
	dir := t.TempDir()
	master, slave := openPTY(t)
	teeLog := filepath.Join(dir, "up.log")
	// Stderr into the pipe too, so tee's file shows whether tee outlived the stop.
	cmd := exec.Command("bash", "-c", `set -o pipefail; "$0" -test.run='^$' 2>&1 | tee "$1" >/dev/null`, os.Args[0], teeLog)
	cmd.Env = localsetEnv(t, dir)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	go func() { _, _ = io.Copy(io.Discard, master) }()
	waitFor(t, teeLog, "Ctrl-C stops everything", 3*time.Minute, cmd)
	if _, err := master.Write([]byte{0x03}); err != nil { // ^C, as typed
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("`localset up | tee` after ^C: %v, want exit 0\n%s", err, readFile(teeLog))
		}
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatalf("`localset up | tee` still running 2 minutes after ^C\n%s", readFile(teeLog))
	}
	if out := readFile(teeLog); !strings.Contains(out, "localset: stopped cleanly") {
		t.Errorf("tee's log ends before the stop did (tee got the ^C?):\n%s", out)
	}
	checkStopOrder(t, filepath.Join(dir, "data"))
}

// With no terminal, a SIGINT to localset's process group — its children run in groups of
// their own — and an output pipe whose reader is gone: log writes fail with EPIPE, and the
// stop still runs in order and exits 0.
func TestSIGINTWithDeadOutputPipeStopsInOrderAndExitsZero(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a local SET")
	}
	dir := t.TempDir()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = localsetEnv(t, dir)
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	lines := make(chan string, 1)
	go func() {
		var seen strings.Builder
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			seen.Write(buf[:n])
			if strings.Contains(seen.String(), "Ctrl-C stops everything") || err != nil {
				lines <- seen.String()
				r.Close() // the reader dies, as tee does
				return
			}
		}
	}()
	select {
	case out := <-lines:
		if !strings.Contains(out, "Ctrl-C stops everything") {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("localset did not come up:\n%s", out)
		}
	case <-time.After(3 * time.Minute):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		t.Fatal("localset did not come up within 3 minutes")
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("localset after SIGINT with a dead output pipe: %v, want exit 0\n%s", err, readFile(filepath.Join(dir, "data", "logs", LogFile)))
	}
	checkStopOrder(t, filepath.Join(dir, "data"))
}

// checkStopOrder reads the stop back from the logs: localset's own, tier by tier, and the
// components', which must show the gateway gone before any server began to drain and every
// server's outbox drained.
func checkStopOrder(t *testing.T, data string) {
	t.Helper()
	log := readFile(filepath.Join(data, "logs", LogFile))
	pos := -1
	for _, step := range []string{
		"stop: gateway (no new requests)", "stop: gateway stopped",
		"stop: cell servers (each drains its queues and outbox)", "stop: cell servers stopped",
		"stop: memcached and MariaDB", "mariadbd stopped", "stop: memcached and MariaDB stopped",
		"localset: stopped cleanly",
	} {
		i := strings.Index(log[max(pos, 0):], step)
		if i < 0 {
			t.Fatalf("localset's log lacks %q after the step before:\n%s", step, log)
		}
		pos += i + 1
	}
	gatewayStopped := logTime(t, filepath.Join(data, "logs", "gateway.log"), "gateway stopped cleanly")
	server := filepath.Join(data, "logs", "tiny-cell-0-server-0.log")
	if draining := logTime(t, server, `"draining"`); draining.Before(gatewayStopped) {
		t.Errorf("the server began draining at %s, before the gateway stopped at %s: it got the signal itself", draining, gatewayStopped)
	}
	if s := readFile(server); strings.Contains(s, "drain incomplete") || !strings.Contains(s, `"drained"`) {
		t.Errorf("the server did not drain cleanly:\n%s", s)
	}
}

// logTime is the time of the last JSON log line of path containing needle.
func logTime(t *testing.T, path, needle string) time.Time {
	t.Helper()
	var at time.Time
	for _, line := range strings.Split(readFile(path), "\n") {
		if !strings.Contains(line, needle) {
			continue
		}
		var rec struct{ Time time.Time }
		if err := json.Unmarshal([]byte(line), &rec); err == nil {
			at = rec.Time
		}
	}
	if at.IsZero() {
		t.Fatalf("%s has no log line with %s:\n%s", path, needle, readFile(path))
	}
	return at
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// waitFor polls path until it contains s.
func waitFor(t *testing.T, path, s string, within time.Duration, cmd *exec.Cmd) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !strings.Contains(readFile(path), s) {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("no %q in %s within %s:\n%s", s, path, within, readFile(path))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// openPTY opens a new pseudo-terminal pair.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	var unlock int32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, m.Fd(), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		t.Fatalf("unlockpt: %v", e)
	}
	var n uint32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, m.Fd(), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); e != 0 {
		t.Fatalf("ptsname: %v", e)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	return m, s
}
