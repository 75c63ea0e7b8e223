package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
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
