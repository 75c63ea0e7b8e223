package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

func TestSweepRemovesOnlyAbandonedSharedDirs(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	deadPid := cmd.Process.Pid // reaped: no such process any more
	mk := func(pid int) string {
		d, err := os.MkdirTemp("", sharedPrefix)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		if err := os.WriteFile(filepath.Join(d, ownerFile), []byte(strconv.Itoa(pid)), 0o600); err != nil {
			t.Fatal(err)
		}
		return d
	}
	abandoned, alive := mk(deadPid), mk(os.Getpid())
	sweepAbandonedShared()
	if _, err := os.Stat(abandoned); !os.IsNotExist(err) {
		t.Errorf("abandoned dir still there: %v", err)
	}
	if _, err := os.Stat(alive); err != nil {
		t.Errorf("live dir removed: %v", err)
	}
}
