package cpustat

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestBusyBetweenSamples(t *testing.T) {
	a, b := Sample{busy: 100, total: 400}, Sample{busy: 250, total: 700}
	if got := Busy(a, b); got != 0.5 {
		t.Fatalf("Busy = %v, want 0.5", got)
	}
	if got := Busy(b, a); got != 0 {
		t.Fatalf("Busy backwards = %v, want 0", got)
	}
}

func TestReadOnLinux(t *testing.T) {
	s := Read()
	if s.total == 0 || s.busy > s.total {
		t.Fatalf("implausible sample %+v", s)
	}
}

func TestProcCPUCountsThisProcess(t *testing.T) {
	pid := os.Getpid()
	before, err := ProcCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	x := uint64(1)
	for {
		for range 1_000_000 {
			x = x*6364136223846793005 + 1442695040888963407
		}
		after, err := ProcCPU(pid)
		if err != nil {
			t.Fatal(err)
		}
		if after-before >= 50*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10s of spinning raised this process's CPU by only %s (%d)", after-before, x)
		}
	}
	self := strings.Join(os.Args, " ")
	found := FindProcs([]string{os.Args[0]})
	if !slices.Contains(found[os.Args[0]], pid) {
		t.Fatalf("FindProcs(%q) = %v, missing this process %d (%s)", os.Args[0], found, pid, self)
	}
	g := Group{"me": {pid}, "gone": {1 << 30}}
	s := g.Sample()
	if s["me"] <= 0 || s["gone"] != 0 {
		t.Fatalf("Sample = %v", s)
	}
}
