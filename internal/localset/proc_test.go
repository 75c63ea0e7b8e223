package localset

import (
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestProcRestartsAfterCrashAndStopsForGood: a killed child comes back (restartPolicy
// Always), a stopped one does not, and its output lands in its log file.
func TestProcRestartsAfterCrashAndStopsForGood(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "child.log")
	p := &proc{name: "child", path: sh, args: []string{"-c", "echo hello; exec sleep 600"}, logPath: logPath,
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := p.start(); err != nil {
		t.Fatal(err)
	}
	waitLog := func(n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			data, _ := os.ReadFile(logPath)
			if strings.Count(string(data), "hello") >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("child output %d not in the log:\n%s", n, data)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitLog(1)
	first := p.pid()
	if err := p.signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for p.pid() == first {
		if time.Now().After(deadline) {
			t.Fatal("killed child was not restarted within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitLog(2)
	done := p.current()
	if err := p.stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	default:
		t.Fatal("stop returned before the child exited")
	}
	time.Sleep(1500 * time.Millisecond) // longer than the restart backoff: nothing may come back
	select {
	case <-p.current():
	default:
		t.Fatal("a stopped child was restarted")
	}
	data, _ := os.ReadFile(logPath)
	if strings.Count(string(data), "hello") != 2 || strings.Count(string(data), "--- localset: starting child") != 2 {
		t.Errorf("log:\n%s", data)
	}
}
